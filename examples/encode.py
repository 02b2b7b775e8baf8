"""Encode a few sentences with an exported folder and print their similarities (no torch involved)."""

import sys

import st_runtime

folder = sys.argv[1] if len(sys.argv) > 1 else "exported/all-MiniLM-L6-v2"
model = st_runtime.SentenceTransformer(folder)
sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
embeddings = model.encode(sentences)
print(f"{model!r}: embeddings {embeddings.shape}, similarity ({model.similarity_fn_name}):")
print(model.similarity(embeddings, embeddings).round(4))
