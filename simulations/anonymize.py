"""De-identify rating data before it is shared: pseudonyms, generalization, k-anonymity.

What :func:`anonymize` does to a :class:`~fedrec.common.data.dataset.RawRatings`:

* **User ids** become keyed pseudonyms, HMAC-SHA256(key, id) (RFC 2104) truncated to the first
  16 bytes (32 hex characters). Under one key the mapping is stable, so a re-run links the same
  person to the same pseudonym; without the key it cannot be inverted or recomputed, and two
  keys give unrelated pseudonyms (HMAC is a PRF). Collisions: for ``n`` users the chance that
  any two 128-bit pseudonyms coincide is at most ``n(n-1)/2**129`` (birthday bound; 1.5e-21
  for a billion users), and :func:`pseudonymize` checks for one anyway and stops rather than
  merging two people.
* **Item ids** are public catalog ids and stay, with their titles and genres.
* **Direct identifiers** (:data:`DIRECT_IDENTIFIERS`: names, contact details, addresses,
  network/device ids, exact birth dates, precise locations, free text) are always dropped. User
  attribute columns are allow-listed: only the quasi-identifiers below are kept, any other
  column is dropped unless named in ``keep_columns`` (it is then kept verbatim *and* counted as
  a quasi-identifier in the k-anonymity check).
* **Quasi-identifiers** are generalized (Sweeney 2002, "k-anonymity: a model for protecting
  privacy"): age to bands of ``age_band`` years ("20-29"); zip code to its first
  ``zip_digits`` characters, or dropped (0, the default: a 3-digit US prefix still splits
  MovieLens 100K into hundreds of classes); timestamps floored to the start of the UTC day,
  ISO week (Monday) or month, with each user's rows kept in their original time order (the
  leave-one-out split picks a user's last items by it; the file says which came first within
  a day, not when); occupation kept (or dropped); gender kept.
* **k-anonymity** over the generalized quasi-identifiers: every combination of values that
  fewer than ``k`` users share is suppressed. ``suppress="attributes"`` (default) replaces all
  quasi-identifier values of those users by :data:`SUPPRESSED` and keeps their ratings, so the
  collaborative signal survives; if the suppressed users are themselves fewer than ``k``, the
  smallest remaining classes join them until they are ``k``. ``suppress="users"`` (strict)
  drops those users with all their ratings. Either way every class in the output has at least
  ``k`` users. k-anonymity protects the demographic columns only: a rating history is itself a
  fingerprint (Narayanan & Shmatikov 2008), which is what differential privacy in training is for.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedrec.common.crypto import KEY_SIZE
from fedrec.common.data.dataset import RawRatings

__all__ = [
    "DIRECT_IDENTIFIERS",
    "KEY_BYTES",
    "MAX_SECONDS",
    "MAX_ZIP_DIGITS",
    "OCCUPATION_MODES",
    "PSEUDONYM_BYTES",
    "QUASI_IDENTIFIERS",
    "SUPPRESSED",
    "SUPPRESSION_MODES",
    "TIME_UNITS",
    "AnonymizeConfig",
    "Anonymized",
    "ColumnPlan",
    "KAnonymity",
    "age_band",
    "anonymize",
    "coarsen_timestamps",
    "drop_reason",
    "equivalence_classes",
    "generalizations",
    "generalize",
    "k_anonymize",
    "key_fingerprint",
    "normalize_column",
    "plan_user_columns",
    "pseudonym",
    "pseudonymize",
    "zip_prefix",
]

# random key bytes: SHA-256's output size, the length RFC 2104 recommends, and the size of
# every fedrec key file (fedrec.common.crypto), which is where the pseudonym key lives
KEY_BYTES = KEY_SIZE
PSEUDONYM_BYTES = 16  # 128-bit pseudonyms, 32 hex characters
SUPPRESSED = "*"
TIME_UNITS = ("day", "week", "month")
OCCUPATION_MODES = ("keep", "drop")
SUPPRESSION_MODES = ("attributes", "users")
MAX_ZIP_DIGITS = 5
MAX_SECONDS = 32_503_680_000  # 3000-01-01: larger timestamps are milliseconds, not seconds
_DAY = 86_400
_MONDAY_OFFSET = 3  # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays

# Normalized column names (see :func:`normalize_column`) that identify a person directly.
DIRECT_IDENTIFIERS: Mapping[str, str] = {
    **dict.fromkeys(
        ("name", "first_name", "firstname", "last_name", "lastname", "surname", "full_name",
         "fullname", "username", "user_name", "login", "screen_name", "nickname", "display_name"),
        "name",
    ),
    **dict.fromkeys(
        ("email", "e_mail", "email_address", "mail", "phone", "phone_number", "telephone", "tel",
         "mobile", "cell"),
        "contact detail",
    ),
    **dict.fromkeys(
        ("address", "street", "street_address", "home_address", "latitude", "longitude", "lat",
         "lon", "lng", "location", "geo", "gps"),
        "address or precise location",
    ),
    **dict.fromkeys(
        ("ip", "ip_address", "device_id", "mac_address", "ssn", "social_security_number",
         "passport", "national_id", "credit_card", "account_number"),
        "account, network or government id",
    ),
    **dict.fromkeys(
        ("dob", "date_of_birth", "birth_date", "birthdate", "birthday"), "exact birth date"
    ),
    **dict.fromkeys(
        ("comment", "comments", "note", "notes", "bio", "about", "description", "review",
         "review_text", "text", "free_text", "message", "tags"),
        "user-provided free text",
    ),
}  # fmt: skip
# Quasi-identifier columns that are generalized, by normalized name -> output name.
QUASI_IDENTIFIERS: Mapping[str, str] = {
    "age": "age",
    "gender": "gender",
    "sex": "gender",
    "occupation": "occupation",
    "job": "occupation",
    "zip": "zip",
    "zipcode": "zip",
    "zip_code": "zip",
    "postcode": "zip",
    "postal_code": "zip",
}


@dataclass(frozen=True)
class AnonymizeConfig:
    """How far to generalize and what k-anonymity to enforce."""

    k: int = 5  # every quasi-identifier combination is shared by >= k users
    time_unit: str = "day"  # timestamps floored to the start of: day | week | month (UTC)
    age_band: int = 10  # width of an age band in years ("20-29"); 1 keeps the exact age
    zip_digits: int = 0  # characters of the zip code kept; 0 drops the column
    occupation: str = "keep"  # keep | drop
    suppress: str = "attributes"  # attributes: mask the QIs of small classes | users: drop them
    keep_columns: tuple[str, ...] = ()  # extra user columns kept verbatim, as quasi-identifiers

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.time_unit not in TIME_UNITS:
            raise ValueError(
                f"time-unit must be one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}"
            )
        if self.age_band < 1:
            raise ValueError(f"age-band must be >= 1 year, got {self.age_band}")
        if not 0 <= self.zip_digits <= MAX_ZIP_DIGITS:
            raise ValueError(f"zip-digits must be in 0..{MAX_ZIP_DIGITS}, got {self.zip_digits}")
        if self.occupation not in OCCUPATION_MODES:
            raise ValueError(
                f"occupation must be one of {', '.join(OCCUPATION_MODES)}, got {self.occupation!r}"
            )
        if self.suppress not in SUPPRESSION_MODES:
            raise ValueError(
                f"suppress must be one of {', '.join(SUPPRESSION_MODES)}, got {self.suppress!r}"
            )
        for column in self.keep_columns:
            reason = DIRECT_IDENTIFIERS.get(normalize_column(column))
            if reason is not None:
                raise ValueError(
                    f"keep-column {column!r} is a direct identifier ({reason}): never kept"
                )


# --- pseudonyms ------------------------------------------------------------------------------


def pseudonym(key: bytes, user_id: str) -> str:
    """HMAC-SHA256(key, UTF-8 user id), first :data:`PSEUDONYM_BYTES` bytes as hex."""
    mac = hmac.new(key, user_id.encode("utf-8"), hashlib.sha256).digest()
    return mac[:PSEUDONYM_BYTES].hex()


def pseudonymize(key: bytes, user_ids: Iterable[str]) -> dict[str, str]:
    """``{user id: pseudonym}``; :class:`ValueError` on a (never yet seen) 128-bit collision."""
    if len(key) != KEY_BYTES:
        raise ValueError(f"pseudonym key must be {KEY_BYTES} bytes, got {len(key)}")
    mapping = {u: pseudonym(key, u) for u in user_ids}
    if len(set(mapping.values())) != len(mapping):
        raise ValueError("two user ids share a pseudonym (HMAC collision): use another key file")
    return mapping


def key_fingerprint(key: bytes) -> str:
    """First 8 hex characters of SHA-256(key): names which key was used, reveals nothing of it."""
    return hashlib.sha256(key).hexdigest()[:8]


# --- generalization --------------------------------------------------------------------------


def normalize_column(name: str) -> str:
    """``"E-Mail Address"`` -> ``"e_mail_address"``: the form the column lists use."""
    return "_".join(name.strip().lower().replace("-", " ").split())


def age_band(value: str, width: int) -> str:
    """``"24"`` with width 10 -> ``"20-29"``; width 1 -> ``"24"``; missing (``""``) stays."""
    text = value.strip()
    if not text or text == SUPPRESSED:
        return text
    try:
        age = float(text)
    except ValueError:
        raise ValueError(f"age {value!r} is not a number of years") from None
    if not math.isfinite(age) or age < 0:
        raise ValueError(f"age {value!r} is not a non-negative number of years")
    low = int(age // width) * width
    return str(low) if width == 1 else f"{low}-{low + width - 1}"


def zip_prefix(value: str, digits: int) -> str:
    """The first ``digits`` characters of a zip code, upper-cased: ``"85711"`` -> ``"857"``."""
    return value.strip().upper()[:digits]


def coarsen_timestamps(timestamps: np.ndarray, unit: str) -> np.ndarray:
    """Floor Unix seconds to the start of their UTC day, ISO week (Monday) or month."""
    ts = np.asarray(timestamps, dtype=np.int64)  # (N,)
    days = ts // _DAY  # floor division: correct before 1970 too
    if unit == "day":
        return days * _DAY
    if unit == "week":
        return (days - (days + _MONDAY_OFFSET) % 7) * _DAY
    if unit == "month":
        months = ts.astype("datetime64[s]").astype("datetime64[M]")
        return months.astype("datetime64[s]").astype(np.int64)
    raise ValueError(f"time unit must be one of {', '.join(TIME_UNITS)}, got {unit!r}")


@dataclass(frozen=True)
class ColumnPlan:
    """Which user attribute columns are kept (renamed) and which are dropped, and why."""

    kept: tuple[tuple[str, str], ...]  # (input column, output column), output order
    dropped: tuple[tuple[str, str], ...]  # (input column, reason)

    @property
    def output_columns(self) -> tuple[str, ...]:
        return tuple(out for _, out in self.kept)


def drop_reason(column: str) -> str | None:
    """Why a column is never kept (a direct identifier), or None."""
    reason = DIRECT_IDENTIFIERS.get(normalize_column(column))
    return None if reason is None else f"direct identifier ({reason})"


def plan_user_columns(columns: Sequence[str], config: AnonymizeConfig) -> ColumnPlan:
    """Sort user attribute columns into kept quasi-identifiers and dropped fields."""
    missing = [c for c in config.keep_columns if c not in columns]
    if missing:
        raise ValueError(
            f"keep-column {', '.join(missing)} not among the user columns ({', '.join(columns)})"
        )
    kept: list[tuple[str, str]] = []
    dropped: list[tuple[str, str]] = []
    for column in columns:
        out = QUASI_IDENTIFIERS.get(normalize_column(column))
        reason = drop_reason(column)
        if reason is not None:
            dropped.append((column, reason))
        elif out == "zip" and config.zip_digits == 0:
            dropped.append((column, "quasi-identifier dropped (zip-digits 0)"))
        elif out == "occupation" and config.occupation == "drop":
            dropped.append((column, "quasi-identifier dropped (occupation drop)"))
        elif out is not None or column in config.keep_columns:
            kept.append((column, out or column))
        else:
            dropped.append((column, "not an allowed quasi-identifier (keep it with keep-column)"))
    outputs = [out for _, out in kept]
    twice = next((o for i, o in enumerate(outputs) if o in outputs[:i]), None)
    if twice is not None:
        raise ValueError(
            f"two user columns both mean {twice!r}: {[c for c, o in kept if o == twice]}"
        )
    return ColumnPlan(kept=tuple(kept), dropped=tuple(dropped))


def generalize(
    attributes: Mapping[str, str], plan: ColumnPlan, config: AnonymizeConfig
) -> tuple[str, ...]:
    """One user's quasi-identifier values in ``plan.output_columns`` order, generalized."""
    values: list[str] = []
    for column, out in plan.kept:
        value = attributes.get(column, "").strip()
        if out == "age":
            value = age_band(value, config.age_band)
        elif out == "zip":
            value = zip_prefix(value, config.zip_digits)
        values.append(value)
    return tuple(values)


def generalizations(config: AnonymizeConfig, plan: ColumnPlan) -> dict[str, str]:
    """Plain-language description of each generalized or kept field, for the summary."""
    how = {"user": "pseudonymized: HMAC-SHA256 with the key file, first 16 bytes as 32 hex"}
    for _, out in plan.kept:
        if out == "age":
            how[out] = f"{config.age_band}-year bands (e.g. 20-{20 + config.age_band - 1})"
        elif out == "zip":
            how[out] = f"first {config.zip_digits} character(s)"
        else:
            how[out] = "kept verbatim (quasi-identifier)"
    how["timestamp"] = f"floored to the start of the UTC {config.time_unit}"
    return how


# --- k-anonymity -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KAnonymity:
    """The outcome of :func:`k_anonymize`."""

    records: dict[str, tuple[str, ...]]  # user -> quasi-identifiers after suppression
    suppressed: tuple[str, ...]  # users masked (attributes) or dropped (users), sorted
    smallest_before: int  # smallest equivalence class after generalization, before suppression
    smallest_after: int  # the k achieved
    classes_before: int
    classes_after: int


def equivalence_classes(records: Mapping[str, tuple[str, ...]]) -> Counter[tuple[str, ...]]:
    """Users per distinct quasi-identifier tuple."""
    return Counter(records.values())


def k_anonymize(records: Mapping[str, tuple[str, ...]], k: int, suppress: str) -> KAnonymity:
    """Suppress the users of every class smaller than ``k`` (see the module docstring)."""
    if not records:
        raise ValueError("no users to anonymize")
    counts = equivalence_classes(records)
    small = {c for c, n in counts.items() if n < k}
    if suppress == "attributes":
        masked = sum(counts[c] for c in small)
        for c, n in sorted(counts.items(), key=lambda cn: (cn[1], cn[0])):
            if not 0 < masked < k:
                break
            if c not in small:  # the suppressed class is too small: merge the smallest others
                small.add(c)
                masked += n
        width = len(next(iter(records.values())))
        marker = (SUPPRESSED,) * width
        out = {u: marker if q in small else q for u, q in records.items()}
    elif suppress == "users":
        out = {u: q for u, q in records.items() if q not in small}
    else:
        raise ValueError(
            f"suppress must be one of {', '.join(SUPPRESSION_MODES)}, got {suppress!r}"
        )
    after = equivalence_classes(out)
    if not after or min(after.values()) < k:
        raise ValueError(
            f"k-anonymity with k={k} cannot hold: only {len(records)} user(s), "
            f"{len(out)} left after suppression (lower k, or generalize more: a wider age band, "
            "fewer zip digits, occupation drop)"
        )
    return KAnonymity(
        records=out,
        suppressed=tuple(sorted(u for u, q in records.items() if q in small)),
        smallest_before=min(counts.values()),
        smallest_after=min(after.values()),
        classes_before=len(counts),
        classes_after=len(after),
    )


# --- the whole data set ----------------------------------------------------------------------


@dataclass(frozen=True)
class Anonymized:
    """De-identified ratings, sorted by pseudonym, each user's in their original time order."""

    user: np.ndarray  # (N,) str pseudonyms
    item: np.ndarray  # (N,) str catalog ids
    rating: np.ndarray  # (N,) float64
    timestamp: np.ndarray  # (N,) int64, coarsened
    user_columns: tuple[str, ...]  # quasi-identifier columns of ``users``
    users: dict[str, tuple[str, ...]]  # pseudonym -> quasi-identifiers, every user in ``user``
    plan: ColumnPlan
    k: KAnonymity
    generalized: dict[str, str]  # field -> how it was generalized, for the summary


def anonymize(raw: RawRatings, key: bytes, config: AnonymizeConfig) -> Anonymized:
    """Pseudonymize, generalize and k-anonymize ``raw`` (see the module docstring)."""
    if raw.timestamp.size and int(raw.timestamp.max()) > MAX_SECONDS:
        raise ValueError(
            f"{raw.source}: timestamp {int(raw.timestamp.max())} is after the year 3000: "
            "timestamps must be Unix seconds (divide milliseconds by 1000)"
        )
    names = pseudonymize(key, np.unique(raw.user).tolist())
    columns = list(dict.fromkeys(c for meta in raw.user_meta.values() for c in meta))
    plan = plan_user_columns(columns, config)
    records: dict[str, tuple[str, ...]] = {}
    for uid, name in names.items():
        try:
            records[name] = generalize(raw.user_meta.get(uid, {}), plan, config)
        except ValueError as err:
            raise ValueError(f"{raw.source}: user {uid!r}: {err}") from None
    k = k_anonymize(records, config.k, config.suppress)

    user = np.array([names[u] for u in raw.user.tolist()], dtype=str)
    keep = (
        np.isin(user, list(k.records)) if config.suppress == "users" else np.ones(len(user), bool)
    )
    user, item = user[keep], raw.item[keep]
    timestamp = coarsen_timestamps(raw.timestamp[keep], config.time_unit)
    # by user, then the exact time (stable: equal times keep the file order): the order within
    # a coarse unit survives, so the split still finds each user's last items; times do not
    order = np.lexsort((raw.timestamp[keep], user))
    return Anonymized(
        user=user[order],
        item=item[order],
        rating=raw.rating[keep][order],
        timestamp=timestamp[order],
        user_columns=plan.output_columns,
        users=dict(sorted(k.records.items())),
        plan=plan,
        k=k,
        generalized=generalizations(config, plan),
    )
