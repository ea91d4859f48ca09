"""Write the example data sets next to this file: breast_cancer.csv and synthetic_10k.csv."""

from pathlib import Path

import pandas as pd
from sklearn.datasets import load_breast_cancer, make_classification

here = Path(__file__).parent
bc = load_breast_cancer(as_frame=True).frame
bc.to_csv(here / "breast_cancer.csv", index=False)

X, y = make_classification(n_samples=10_000, n_features=12, n_informative=6, random_state=0)
df = pd.DataFrame(X, columns=[f"f{i}" for i in range(12)])
df["label"] = y
df.to_csv(here / "synthetic_10k.csv", index=False)
print(f"wrote {here / 'breast_cancer.csv'} ({len(bc)} rows) and {here / 'synthetic_10k.csv'} ({len(df)} rows)")
