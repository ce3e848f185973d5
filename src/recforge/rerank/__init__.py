"""Re-rankers: reorder each user's top-N candidates from a model into a top-K list that trades accuracy for
diversity (MMR), calibration to the user's tastes (Calibrated), popularity balance (xQuAD) or a guaranteed share
of long-tail items (FA*IR). Config group ``rerank=none|mmr|calibrated|xquad|fair``; this package imports only torch.
"""

from recforge.rerank.base import Reranker
from recforge.rerank.calibrated import Calibrated
from recforge.rerank.fair import FairTopK
from recforge.rerank.mmr import MMR
from recforge.rerank.xquad import XQuAD

__all__ = ["Calibrated", "FairTopK", "MMR", "Reranker", "XQuAD"]
