"""The shipped models and their cards, installed with kws as the package ``kws_models``
(kws_rpc.model.shipped.models_dir finds them)."""
