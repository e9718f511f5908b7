"""Write the quickstart's two small tasks from the ISO data the `pycountry` package ships.

Task "country": the ISO 3166-1 alpha-2 code of a country ("France" -> "FR").
Task "currency": the ISO 4217 code of a currency ("Euro" -> "EUR").

Each task is split, with a fixed seed, into train and held-out test files of
{"question", "answer"} rows (JSON lines). The files are committed; run this
script to regenerate them: `python examples/make_quickstart_data.py`.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pycountry

HELD_OUT = 40
SKIP_CURRENCY_WORDS = ("Unit", "Fund", "Bond", "Code", "Testing", "Transactions", "Gold", "Silver",
                       "Platinum", "Palladium", "Drawing", "WIR", "Sucre", "UIC", "Mvdol", "Unidad", "Valor")


def country_rows() -> list[dict[str, str]]:
    rows = []
    for country in pycountry.countries:
        name = getattr(country, "common_name", None) or country.name
        rows.append({"question": f"What is the ISO 3166 alpha-2 code of {name}?", "answer": country.alpha_2})
    return rows


def currency_rows() -> list[dict[str, str]]:
    rows = []
    for currency in pycountry.currencies:
        if any(word in currency.name for word in SKIP_CURRENCY_WORDS) or "(" in currency.name:
            continue
        rows.append({"question": f"What is the ISO 4217 code of the {currency.name}?", "answer": currency.alpha_3})
    return rows


def write(name: str, rows: list[dict[str, str]], out: Path) -> None:
    random.Random(0).shuffle(rows)
    splits = {"test": rows[:HELD_OUT], "train": rows[HELD_OUT:]}
    for split, items in splits.items():
        with open(out / f"{name}_{split}.jsonl", "w") as fh:
            for row in items:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"{name}_{split}.jsonl: {len(items)} rows")


if __name__ == "__main__":
    out = Path(__file__).parent / "data"
    out.mkdir(exist_ok=True)
    write("country", country_rows(), out)
    write("currency", currency_rows(), out)
