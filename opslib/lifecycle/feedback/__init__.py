"""Feedback: the event contract and its intake (``events``), raw-log health figures (``health``,
stage 10) and the traffic simulator that sends searches and feedback through the serving path
(``simulate``)."""
