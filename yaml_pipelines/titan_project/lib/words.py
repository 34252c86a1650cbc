"""A helper module of the project: it only exists on the workers because the folder travels."""


def count(text: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for w in text.split():
        out[w] = out.get(w, 0) + 1
    return out
