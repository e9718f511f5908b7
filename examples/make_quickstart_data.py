"""Write the quickstart's two skill tasks from the place names the `pycountry` package ships.

Two skills a small instruct model lacks and a LoRA adapter learns from a few
hundred examples, both scored by exact match of a parsed answer:

* ``dates``: a sentence mentions a date in one of several written forms
  ("the 5th of March, 1987", "Thu, Mar 5, 1987", ...); the answer is that date
  in ISO 8601 (``1987-03-05``).
* ``shipments``: a sentence mentions a shipment; the answer is a fixed JSON
  object ``{"item", "quantity", "region", "country"}``.

The regions are pycountry's subdivisions, with their countries. The held-out
examples share no entity with the training ones: their countries (so their
regions), their years and their items are never seen in training. Rows are
``{"messages": [system, user, assistant], "input", "answer"}``: the system turn is
the task's instruction, the user turn the sentence, the assistant turn the answer. Everything
is deterministic from ``--seed`` (default 0); the files under examples/data/
are committed, regenerate them with ``python examples/make_quickstart_data.py``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
from pathlib import Path

import pycountry

TRAIN, HELD_OUT = 600, 60
NAME = re.compile(r"[A-Z][A-Za-z \-']{2,18}[a-z]")   # plain names: no commas, brackets or accents

INSTRUCTIONS = {
    "dates": "Write the date in this sentence in ISO 8601 format (YYYY-MM-DD). Answer with the date only.",
    "shipments": ('Extract the shipment from this sentence as JSON with the keys "item", "quantity", "region" '
                  'and "country". Answer with the JSON only.'),
}

DATE_SENTENCES = [
    "The festival in {region}, {country} took place on {date}.",
    "On {date}, a new bridge opened in {region} ({country}).",
    "Our office in {region} was founded on {date}.",
    "She moved to {region}, {country} on {date} and never left.",
    "Records from {region} show heavy rain on {date}.",
    "The treaty was signed in {region} on {date}.",
    "{date}: the first train reached {region}, {country}.",
    "The museum of {region} reopened to visitors on {date}.",
]
SHIPMENT_SENTENCES = [
    "{n} {item} arrived in {region}, {country} this morning.",
    "We shipped {n} {item} to {region} in {country}.",
    "The depot in {region} ({country}) sent out {n} {item}.",
    "{region}, {country}: {n} {item} delivered.",
    "A truck carrying {n} {item} reached {region}, {country}.",
    "Customers in {region}, {country} ordered {n} {item} today.",
    "Yesterday {n} {item} left the port for {region} ({country}).",
]
ITEMS = ["bicycles", "laptops", "chairs", "tables", "lamps", "kettles", "umbrellas", "printers", "helmets",
         "backpacks", "guitars", "blankets", "mirrors", "toasters", "cameras", "jackets", "boots", "tents",
         "pianos", "radios", "batteries", "scooters", "ladders", "barrels", "crates of apples", "sacks of rice",
         "boxes of tea", "bottles of oil", "rolls of cable", "bags of cement", "tyres", "sofas", "fridges",
         "ovens", "drills", "hammers", "kayaks", "violins", "telescopes", "microscopes", "heaters", "fans",
         # more items: the held-out quarter has ~20, so no single item's spelling weighs more than a few points
         "scissors", "pillows", "bottles of wine", "cartons of milk", "wheelbarrows", "projectors", "keyboards",
         "monitors", "speakers", "headphones", "watches", "candles", "buckets", "shovels", "saws", "wrenches",
         "paddles", "surfboards", "skateboards", "sleeping bags", "flashlights", "generators", "pumps", "valves",
         "pallets of bricks", "boxes of nails", "jars of honey", "sacks of flour", "bales of cotton", "drums of paint",
         "solar panels", "water filters", "sewing machines", "typewriters", "accordions", "trumpets", "easels",
         "globes", "calculators", "wardrobes"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def written(date: datetime.date, rng: random.Random) -> str:
    """One of the written forms of ``date`` (month names spelled out or abbreviated, no numeric dd/mm forms)."""
    month, abbr = MONTHS[date.month - 1], MONTHS[date.month - 1][:3]
    weekday = date.strftime("%A")
    forms = [
        f"{month} {date.day}, {date.year}",
        f"{date.day} {month} {date.year}",
        f"the {ordinal(date.day)} of {month}, {date.year}",
        f"{abbr} {date.day}, {date.year}",
        f"{weekday}, {date.day} {month} {date.year}",
        f"{month} {ordinal(date.day)} {date.year}",
        f"{weekday[:3]}, {abbr} {date.day}, {date.year}",
        f"{date.day}-{abbr}-{date.year}",
    ]
    return rng.choice(forms)


def places(seed: int) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(region, country) pairs for training and for the held-out set, from disjoint countries."""
    by_country: dict[str, list[str]] = {}
    for sub in pycountry.subdivisions:
        country = pycountry.countries.get(alpha_2=sub.country_code)
        country_name = getattr(country, "common_name", None) or country.name
        if NAME.fullmatch(sub.name) and NAME.fullmatch(country_name) and sub.name != country_name:
            by_country.setdefault(country_name, []).append(sub.name)
    countries = sorted(by_country)
    random.Random(seed).shuffle(countries)
    cut = len(countries) // 5
    test_countries, train_countries = countries[:cut], countries[cut:]
    pairs = lambda names: [(region, c) for c in sorted(names) for region in sorted(set(by_country[c]))]  # noqa: E731
    train, test = pairs(train_countries), pairs(test_countries)
    seen = {region for region, _ in train}
    return train, [(region, country) for region, country in test if region not in seen]


def split(values: list, seed: int, fraction: float = 0.25) -> tuple[list, list]:
    values = list(values)
    random.Random(seed).shuffle(values)
    cut = max(1, int(len(values) * fraction))
    return values[cut:], values[:cut]


def row(task: str, sentence: str, answer: str) -> dict:
    # the instruction is the system turn: it replaces the template's default system prompt (21 tokens
    # of "You are a helpful AI assistant named SmolLM..."), a sixth of every example's tokens
    return {"messages": [{"role": "system", "content": INSTRUCTIONS[task]}, {"role": "user", "content": sentence},
                         {"role": "assistant", "content": answer}],
            "input": sentence, "answer": answer}


def date_rows(pairs: list[tuple[str, str]], years: list[int], n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        region, country = rng.choice(pairs)
        year = rng.choice(years)
        date = datetime.date(year, 1, 1) + datetime.timedelta(days=rng.randrange(365))
        sentence = rng.choice(DATE_SENTENCES).format(region=region, country=country, date=written(date, rng))
        rows.append(row("dates", sentence[0].upper() + sentence[1:], date.isoformat()))
    return rows


def shipment_rows(pairs: list[tuple[str, str]], items: list[str], n: int, rng: random.Random) -> list[dict]:
    rows = []
    for _ in range(n):
        region, country = rng.choice(pairs)
        item, quantity = rng.choice(items), rng.randint(2, 950)
        sentence = rng.choice(SHIPMENT_SENTENCES).format(n=quantity, item=item, region=region, country=country)
        answer = json.dumps({"item": item, "quantity": quantity, "region": region, "country": country})
        rows.append(row("shipments", sentence[0].upper() + sentence[1:], answer))
    return rows


def write(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        for item in rows:
            fh.write(json.dumps(item, ensure_ascii=False) + "\n")
    print(f"{path.name}: {len(rows)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "data")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    train_pairs, test_pairs = places(args.seed)
    train_years, test_years = split(range(1900, 2031), args.seed + 1)
    train_items, test_items = split(ITEMS, args.seed + 2)
    rng = random.Random(args.seed + 3)
    write(args.output / "dates_train.jsonl", date_rows(train_pairs, train_years, TRAIN, rng))
    write(args.output / "dates_test.jsonl", date_rows(test_pairs, test_years, HELD_OUT, rng))
    write(args.output / "shipments_train.jsonl", shipment_rows(train_pairs, train_items, TRAIN, rng))
    write(args.output / "shipments_test.jsonl", shipment_rows(test_pairs, test_items, HELD_OUT, rng))


if __name__ == "__main__":
    main()
