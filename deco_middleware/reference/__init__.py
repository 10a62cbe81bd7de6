"""Import the reference's (Zacks917/AutoDeco) released heads as our ONNX artifact, and export ours to it."""

from .convert import (
    ExportReport,
    ImportReport,
    UnknownReferenceKeysWarning,
    export_reference,
    import_reference,
)

__all__ = ["ExportReport", "ImportReport", "UnknownReferenceKeysWarning", "export_reference", "import_reference"]
