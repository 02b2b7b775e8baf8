"""st_runtime: run sentence-transformers models exported by `st-export` with onnxruntime, tokenizers and numpy.

No torch, transformers or sentence-transformers are imported, directly or indirectly.

`st_runtime.load(folder)` opens a folder with the class its manifest names (the registry: st_runtime/kinds.py). How
a folder is made and read, the folder contract, and how to add a model kind or a variant: docs/architecture.md.
"""

from st_runtime import util
from st_runtime.cross_encoder import CrossEncoder
from st_runtime.errors import InvalidInputError, ManifestError, ModelFileError, ProviderError, StRuntimeError
from st_runtime.kinds import TASK_CLASSES, load
from st_runtime.manifest import FORMAT_VERSION, MANIFEST_NAME, Manifest, TokenizerSpec, Variant, load_manifest
from st_runtime.multi_vector_encoder import MultiVectorEncoder
from st_runtime.providers import resolve_providers
from st_runtime.sentence_transformer import SentenceTransformer
from st_runtime.sparse_encoder import SparseEmbeddings, SparseEncoder

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "TASK_CLASSES",
    "CrossEncoder",
    "InvalidInputError",
    "Manifest",
    "ManifestError",
    "ModelFileError",
    "MultiVectorEncoder",
    "ProviderError",
    "SentenceTransformer",
    "SparseEmbeddings",
    "SparseEncoder",
    "StRuntimeError",
    "TokenizerSpec",
    "Variant",
    "__version__",
    "load",
    "load_manifest",
    "resolve_providers",
    "util",
]
