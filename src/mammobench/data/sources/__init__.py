"""Dataset sources: each turns a dataset as users hold it into manifest records plus a list of skips.

* :mod:`.cbis_ddsm` - CBIS-DDSM, Kaggle JPEG mirror or TCIA DICOM tree.
* :mod:`.mias` - mini-MIAS (``Info.txt`` + PGM/PNG).
* :mod:`.table` - a user's own CSV (``path,label,patient_id``).
"""

from mammobench.data.sources.base import Skipped, SourceResult

__all__ = ["SourceResult", "Skipped"]
