"""Training datasets (stage 20): the ``retrieval-group-v1`` builder (``builder``) and its
Great Expectations data-quality suite (``quality``)."""
