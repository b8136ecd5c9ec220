"""Callbacks for training frameworks, each an optional extra.

* :mod:`gradwatch.integrations.lightning` - ``GradWatchCallback`` for Lightning's
  ``Trainer`` (``pip install 'gradwatch[lightning]'``);
* :mod:`gradwatch.integrations.transformers` - ``GradWatchCallback`` for Hugging Face's
  ``Trainer`` (``pip install 'gradwatch[transformers]'``).

Importing this package imports neither framework; each submodule imports its own and
raises an ``ImportError`` naming the extra to install when it is missing.
"""
