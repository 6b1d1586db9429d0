"""`python -m lungct.import_model`: put the model shipped in models/ into the local BentoML store."""

from lungct.store import import_shipped

if __name__ == "__main__":
    print(f"model in store: {import_shipped()}")
