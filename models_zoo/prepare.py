"""Turn a model2vec static model (config.json, model.safetensors, tokenizer.json; no modules.json) into a
sentence-transformers folder (StaticEmbedding -> Normalize), saved once into the zoo's cache.

Needs the export extra (torch, sentence-transformers), imported only when a model2vec recipe is resolved.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from models_zoo.checks import check_complete
from models_zoo.errors import SourceIntegrityError
from models_zoo.recipe import Recipe
from models_zoo.sources import atomic_dir, cache_dir, publish_dir


def static_table(folder: Path):
    """The full (vocabulary, dim) float32 table of a model2vec model, as model2vec's own encode uses it.

    A vocabulary-quantized model stores fewer rows than tokens: row `mapping[id]` of `embeddings`, scaled by
    `weights[id]`, is token id's vector; a plain model stores one row per token.
    """
    import numpy as np
    from safetensors.numpy import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    if "embeddings" not in tensors:
        raise SourceIntegrityError(f"{folder / 'model.safetensors'} has no 'embeddings' tensor (found "
                                   f"{sorted(tensors)}); it is not a model2vec model.")
    table = tensors["embeddings"].astype(np.float32)
    if "mapping" in tensors:
        table = table[tensors["mapping"]]
    if "weights" in tensors:
        table = table * tensors["weights"].astype(np.float32)[:, None]
    return table


def prepared_model2vec(recipe: Recipe, folder: Path, fingerprint: str) -> Path:
    """The sentence-transformers folder built from model2vec `folder`, cached under <cache>/zoo/prepared by the
    source's fingerprint (built atomically the first time)."""
    target = cache_dir() / "zoo" / "prepared" / f"{recipe.name}-{fingerprint[:12]}"
    if target.is_dir():
        check_complete(target, "sentence-transformers")
        return target
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, StaticEmbedding
    from tokenizers import Tokenizer

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    static = StaticEmbedding(Tokenizer.from_file(str(folder / "tokenizer.json")), embedding_weights=static_table(folder))
    modules = [static, Normalize()] if config.get("normalize", False) else [static]
    staging = atomic_dir(target)
    try:
        SentenceTransformer(modules=modules, device="cpu").save(str(staging))
        (staging / "zoo_source.json").write_text(json.dumps(
            {"recipe": recipe.name, "model2vec_folder": str(folder), "fingerprint": fingerprint}, indent=2) + "\n")
        check_complete(staging, "sentence-transformers")
        publish_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
