"""Evaluation (stage 40): candidate vs baseline metrics, paired bootstrap and the verdict
(``evaluate``), operator-managed evaluation sets (``sets``) and report pieces (``report``)."""
