"""Who the records are about: French names, addresses, e-mail domains.

Faker (fr_FR) is slow per call: its output is drawn once into Pools (seeded with the same seed),
then sampled with the generator's seeded Random (builder.Builder.person, email, phone).
"""

from __future__ import annotations

import functools
import unicodedata
from dataclasses import dataclass

from tools.seed.errors import SeedError

EMAIL_DOMAINS = (
    "gmail.com", "orange.fr", "free.fr", "laposte.net", "sfr.fr", "hotmail.fr", "yahoo.fr",
    "outlook.fr", "wanadoo.fr", "icloud.com",
)  # fmt: skip


@functools.cache
def ascii_slug(text: str) -> str:
    """'Hélène-Marie' -> 'helene-marie': the e-mail form of a name."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum() or ch == "-")


@dataclass(frozen=True)
class Pools:
    """Faker output drawn once, then sampled with the seeded Random."""

    female_first_names: tuple[str, ...]
    male_first_names: tuple[str, ...]
    last_names: tuple[str, ...]
    streets: tuple[str, ...]
    places: tuple[tuple[str, str], ...]  # (postal code, city)
    vet_clinics: tuple[str, ...]
    agents: tuple[str, ...]

    @classmethod
    def build(cls, seed: int, size: int = 2000) -> Pools:
        try:
            from faker import Faker
        except ImportError as exc:  # a dev dependency (requirements-dev.txt)
            raise SeedError("tools.seed needs Faker: pip install -r requirements-dev.txt") from exc
        fake = Faker("fr_FR")
        fake.seed_instance(seed)
        last_names = tuple(fake.last_name() for _ in range(size))
        places = tuple((fake.postcode(), fake.city()) for _ in range(size))
        clinic_patterns = (
            lambda: f"Clinique vétérinaire {fake.last_name()}",
            lambda: f"Cabinet vétérinaire de {fake.city()}",
            lambda: f"Centre hospitalier vétérinaire {fake.city()}",
            lambda: f"Clinique vétérinaire des {fake.last_name()}",
        )
        return cls(
            female_first_names=tuple(fake.first_name_female() for _ in range(size // 2)),
            male_first_names=tuple(fake.first_name_male() for _ in range(size // 2)),
            last_names=last_names,
            streets=tuple(fake.street_address() for _ in range(size)),
            places=places,
            vet_clinics=tuple(clinic_patterns[i % len(clinic_patterns)]() for i in range(size // 4)),
            agents=tuple(f"{fake.first_name()} {fake.last_name()[0]}." for _ in range(60)),
        )
