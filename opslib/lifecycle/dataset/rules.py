"""The generation rules' vocabulary: rule versions, item sources and their confidences.

Shared by the builder (which writes items) and the data-quality suite (which checks them).
``retrieval-group-v1`` uses LIKE events only; ``retrieval-group-v2`` (the default) also reads
DISLIKE events as votes on the chunks an answer used — see ``builder`` and docs/datasets.md.
"""

from __future__ import annotations

RULE_V1 = "retrieval-group-v1"
RULE_V2 = "retrieval-group-v2"
GENERATION_RULES = (RULE_V1, RULE_V2)
DEFAULT_RULE = RULE_V2

POSITIVE = "liked_response_used_chunk"
DISLIKED = "disliked_response_used_chunk"  # v2 only
EXPOSED = "exposed_unused"
RANDOM = "random_same_project"
CONFIDENCE = {POSITIVE: 0.8, DISLIKED: 0.6, EXPOSED: 0.4, RANDOM: 0.2}
SOURCES_BY_RULE = {RULE_V1: (POSITIVE, EXPOSED, RANDOM), RULE_V2: (POSITIVE, DISLIKED, EXPOSED, RANDOM)}

# v2: at most this many disliked chunks per group (the most disliked first), so a question that
# was answered badly many times does not flood its groups.
MAX_DISLIKED = 3
