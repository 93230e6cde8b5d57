"""Work on the data set: loading it, evaluating and comparing models, statistics."""
