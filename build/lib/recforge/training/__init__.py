"""Where model, loss, optimizer and metrics meet: the LightningModule and callbacks."""
