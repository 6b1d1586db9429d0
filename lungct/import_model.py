"""`python -m lungct.import_model`: put the model shipped in models/ into the local BentoML store.

`python -m lungct.import_model --export TAG` does the reverse: copies a stored model's weights and
metadata into models/ to be committed as the shipped model.
"""

import argparse

from lungct.store import export_shipped, import_shipped

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--export", metavar="TAG", help="copy this stored model into models/ instead")
    args = parser.parse_args()
    if args.export:
        print(f"exported {args.export} to {export_shipped(args.export)}")
    else:
        print(f"model in store: {import_shipped()}")
