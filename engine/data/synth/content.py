"""Field grammars: random but plausible nameplate content.

Real nameplates are dense with codes (model numbers, serials, standards) rather than words, so
an OCR model must learn character shapes, not a language prior.  The grammars below therefore
mix realistic templates ("380 V", "1450 r/min", "IEC 60034-1") with random codes built from
letter/digit patterns.  Everything is finally passed through :func:`sanitize` so that no
character outside the recipe's charset is ever rendered or labelled.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

DEFAULT_CHARSET = string.digits + string.ascii_uppercase + string.ascii_lowercase + " -:./%()#+,"

Rng = np.random.Generator


def pick(rng: Rng, seq: Sequence[Any]) -> Any:
    """One element of ``seq`` (a sequence), chosen by ``rng``."""
    return seq[int(rng.integers(len(seq)))]


def digits(rng: Rng, n: int) -> str:
    return "".join(str(d) for d in rng.integers(0, 10, n))


def letters(rng: Rng, n: int) -> str:
    return "".join(string.ascii_uppercase[i] for i in rng.integers(0, 26, n))


def alnum(rng: Rng, n: int) -> str:
    pool = string.ascii_uppercase + string.digits
    return "".join(pool[i] for i in rng.integers(0, len(pool), n))


def _num(rng: Rng, lo: float, hi: float, decimals: int) -> str:
    v = rng.uniform(lo, hi)
    s = f"{v:.{decimals}f}"
    return s.replace(".", ",") if decimals and rng.random() < 0.08 else s


# ---------------------------------------------------------------- value grammars
def model_code(rng: Rng) -> str:
    r = rng.random()
    if r < 0.3:
        return f"{letters(rng, int(rng.integers(1, 4)))}-{digits(rng, int(rng.integers(2, 5)))}{letters(rng, int(rng.integers(0, 2)))}"
    if r < 0.5:
        return f"{letters(rng, 1)}{digits(rng, 1)}-{digits(rng, 3)}{pick(rng, 'SML')}-{pick(rng, '2468')}"
    if r < 0.65:
        return f"{digits(rng, 1)}{letters(rng, 2)}{digits(rng, 1)} {digits(rng, 3)}-{digits(rng, 1)}{letters(rng, 2)}{digits(rng, 2)}"
    if r < 0.8:
        return f"{letters(rng, int(rng.integers(2, 5)))} {digits(rng, int(rng.integers(2, 4)))}{letters(rng, int(rng.integers(1, 3)))}"
    if r < 0.9:
        return f"{letters(rng, 2)}{digits(rng, 3)}/{digits(rng, 2)}-{alnum(rng, 3)}"
    return alnum(rng, int(rng.integers(5, 11)))


def serial(rng: Rng) -> str:
    r = rng.random()
    if r < 0.3:
        return f"{digits(rng, 4)}-{digits(rng, 4)}"
    if r < 0.5:
        return f"{letters(rng, 1)}{digits(rng, int(rng.integers(6, 10)))}"
    if r < 0.65:
        return f"{digits(rng, 4)}/{digits(rng, 5)}"
    if r < 0.8:
        return digits(rng, int(rng.integers(6, 12)))
    return f"{alnum(rng, 2)}{digits(rng, 2)}.{digits(rng, 4)}.{digits(rng, 3)}"


def voltage(rng: Rng) -> str:
    sp = pick(rng, ("", " "))
    return pick(
        rng,
        (
            f"220-240{sp}V",
            f"380{sp}V",
            f"400{sp}V",
            f"230/400{sp}V",
            f"400/690{sp}V",
            f"415{sp}V",
            f"24{sp}VDC",
            f"110{sp}V",
            f"460{sp}V",
            f"220/380{sp}V D/Y",
            f"690{sp}V",
            f"12{sp}V DC",
            f"{int(rng.integers(1, 70)) * 10}{sp}V",
        ),
    )


def frequency(rng: Rng) -> str:
    sp = pick(rng, ("", " "))
    return pick(rng, (f"50{sp}Hz", f"60{sp}Hz", f"50/60{sp}Hz", f"50{sp}HZ"))


def power(rng: Rng) -> str:
    kw = pick(
        rng,
        (
            "0.18",
            "0.37",
            "0.55",
            "0.75",
            "1.1",
            "1.5",
            "2.2",
            "3",
            "3.7",
            "4",
            "5.5",
            "7.5",
            "11",
            "15",
            "18.5",
            "22",
            "30",
            "37",
            "45",
            "55",
            "75",
            "90",
            "110",
        ),
    )
    sp = pick(rng, ("", " "))
    r = rng.random()
    if r < 0.7:
        return f"{kw}{sp}kW"
    if r < 0.85:
        return f"{kw}{sp}KW"
    if r < 0.93:
        return f"{pick(rng, ('1', '2', '3', '5', '7.5', '10', '15', '20'))}{sp}HP"
    return f"{int(float(kw) * 1000)}{sp}W"


def current(rng: Rng) -> str:
    a = _num(rng, 0.4, 180, int(pick(rng, (1, 1, 2, 0))))
    sp = pick(rng, ("", " "))
    if rng.random() < 0.3:
        return f"{a}/{_num(rng, 0.3, 100, 1)}{sp}A"
    return f"{a}{sp}A"


def speed(rng: Rng) -> str:
    n = pick(rng, (2880, 2900, 2850, 1450, 1440, 1460, 1420, 960, 970, 720, 1750, 3450, 1470))
    n += int(rng.integers(-15, 16)) if rng.random() < 0.4 else 0
    return f"{n}{pick(rng, (' r/min', ' RPM', ' rpm', 'r/min', ' min-1', ' 1/min'))}"


def date(rng: Rng) -> str:
    y = int(rng.integers(1995, 2027))
    m = int(rng.integers(1, 13))
    d = int(rng.integers(1, 29))
    return pick(
        rng,
        (
            f"{y}/{m:02d}",
            f"{y}.{m:02d}",
            f"{m:02d}/{y}",
            f"{y}-{m:02d}-{d:02d}",
            f"{d:02d}.{m:02d}.{y}",
            f"{y}",
            f"{m:02d}.{y % 100:02d}",
        ),
    )


def ip_rating(rng: Rng) -> str:
    return pick(rng, ("IP55", "IP54", "IP44", "IP65", "IP66", "IP67", "IP68", "IP23", "IP56"))


def weight(rng: Rng) -> str:
    return f"{_num(rng, 2, 900, int(pick(rng, (0, 0, 1))))}{pick(rng, (' kg', 'kg', ' KG', ' Kg'))}"


def ambient(rng: Rng) -> str:
    hi = pick(rng, (40, 45, 50, 55))
    return pick(
        rng,
        (
            f"{hi}\u00b0C",
            f"{hi} \u00b0C",
            f"-20...+{hi}\u00b0C",
            f"{hi} C",
            f"-20/+{hi} C",
            f"{hi}C",
        ),
    )


def standard(rng: Rng) -> str:
    return pick(
        rng,
        (
            "IEC 60034-1",
            "IEC 60034-30",
            "EN 60204-1",
            "GB/T 1032",
            "NEMA MG1",
            "DIN EN 809",
            "EN ISO 12100",
            "IEC 61439-1",
            "VDE 0530",
            "ISO 9906",
            "EN 60529",
            "JIS C 4210",
            "IEC 60076-11",
            "CSA C22.2 No.100",
            "UL 1004-1",
        ),
    )


def insulation(rng: Rng) -> str:
    return pick(rng, ("F", "B", "H", "F", "E"))


def frame(rng: Rng) -> str:
    return f"{pick(rng, (63, 71, 80, 90, 100, 112, 132, 160, 180, 200, 225, 250))}{pick(rng, ('S', 'M', 'L', 'MLA', 'SA', 'M/L', ''))}"


def bearing(rng: Rng) -> str:
    return f"6{pick(rng, ('2', '3'))}{digits(rng, 2)}{pick(rng, ('-2Z', 'ZZ', '-2RS', ' C3', '-2Z C3', ''))}"


def order_no(rng: Rng) -> str:
    r = rng.random()
    if r < 0.4:
        return f"{digits(rng, 1)}{letters(rng, 2)}{digits(rng, 4)}-{digits(rng, 1)}{letters(rng, 2)}{digits(rng, 2)}-{digits(rng, 1)}{letters(rng, 2)}{digits(rng, 1)}"
    if r < 0.7:
        return f"{digits(rng, 3)}.{digits(rng, 3)}.{digits(rng, 3)}"
    return f"{letters(rng, 2)}-{digits(rng, 5)}-{alnum(rng, 2)}"


def flow(rng: Rng) -> str:
    return f"{_num(rng, 0.5, 250, 1)} {pick(rng, ('m3/h', 'l/min', 'L/min', 'm3/min', 'GPM'))}"


def head(rng: Rng) -> str:
    return f"{_num(rng, 3, 120, int(pick(rng, (0, 1))))} m"


def pressure(rng: Rng) -> str:
    return pick(
        rng,
        (
            f"{int(rng.integers(4, 40))} bar",
            f"{_num(rng, 0.2, 16, 1)} MPa",
            f"{int(rng.integers(60, 300))} PSI",
            f"PN{pick(rng, (6, 10, 16, 25, 40))}",
        ),
    )


def torque(rng: Rng) -> str:
    return f"{int(rng.integers(5, 5000))} Nm"


def ratio(rng: Rng) -> str:
    return f"i={_num(rng, 3, 120, int(pick(rng, (1, 2))))}"


def kva(rng: Rng) -> str:
    return f"{pick(rng, (0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 630, 1000))} kVA"


def percent(rng: Rng) -> str:
    return f"{_num(rng, 60, 97, 1)}%"


def cos_phi(rng: Rng) -> str:
    return f"0.{int(rng.integers(70, 93))}"


def phone(rng: Rng) -> str:
    return f"TEL: +{int(rng.integers(1, 99))} ({int(rng.integers(0, 9))}) {digits(rng, 3)} {digits(rng, 4)}"


# (key variants, value grammar, weight) per field name
FieldSpec = tuple[tuple[str, ...], Callable[[Rng], str]]
FIELDS: dict[str, FieldSpec] = {
    "model": (("MODEL", "TYPE", "MODEL NO.", "Mod.", "TYP", "Type"), model_code),
    "serial": (("S/N", "SERIAL NO.", "SER. NO.", "No.", "Nr.", "SN", "Serial No."), serial),
    "voltage": (("VOLTAGE", "V", "U", "RATED VOLTAGE", "Volts"), voltage),
    "freq": (("FREQ.", "FREQUENCY", "Hz", "f"), frequency),
    "power": (("POWER", "OUTPUT", "P", "RATED POWER", "Pn"), power),
    "current": (("CURRENT", "I", "AMPS", "RATED CURRENT", "FLA", "In"), current),
    "speed": (("SPEED", "RPM", "n", "RATED SPEED"), speed),
    "cos": (("COS PHI", "Cos", "PF", "POWER FACTOR", "COS \u03c6", "cos\u03c6"), cos_phi),
    "eff": (("EFF.", "EFFICIENCY", "IE3", "IE2"), percent),
    "ip": (("PROTECTION", "ENCLOSURE", "IP", "DEGREE OF PROT."), ip_rating),
    "ins": (("INS. CL.", "INSUL. CLASS", "CL.", "INS.CL", "ISOL. KL."), insulation),
    "duty": (
        ("DUTY", "DUTY TYPE", "S.F."),
        lambda r: pick(r, ("S1", "S3 40%", "CONT.", "S1", "1.15", "S6 60%")),
    ),
    "date": (("MFG DATE", "DATE", "MFD", "YEAR", "DATE OF MFG.", "PROD. DATE", "Baujahr"), date),
    "weight": (("WEIGHT", "MASS", "NET WT.", "WT.", "Weight"), weight),
    "amb": (("AMB.", "AMBIENT", "Ta", "AMB. TEMP.", "T AMB"), ambient),
    "std": (("STD", "STANDARD", "ACC. TO", "CONFORMS TO"), standard),
    "frame": (("FRAME", "FR.", "FRAME SIZE", "BG"), frame),
    "brg_de": (("BEARING DE", "DE BRG", "D-END", "BRG. DE"), bearing),
    "brg_nde": (("BEARING NDE", "NDE BRG", "N-END", "BRG. NDE"), bearing),
    "poles": (("POLES", "POLE"), lambda r: pick(r, ("2", "4", "6", "8", "4P", "2P"))),
    "conn": (("CONN.", "CONNECTION"), lambda r: pick(r, ("D/Y", "DELTA", "STAR", "Y", "D"))),
    "phase": (("PHASE", "PH", "PHASES"), lambda r: pick(r, ("3", "1", "3PH", "1PH"))),
    "order": (("ORDER NO.", "ART. NO.", "P/N", "PART NO.", "ID NO.", "CAT. NO."), order_no),
    "flow": (("Q", "FLOW", "CAPACITY", "Q max"), flow),
    "head": (("H", "HEAD", "H max", "TOTAL HEAD"), head),
    "pressure": (("MAX. PRESSURE", "P MAX", "WORKING PRESS.", "PRESSURE"), pressure),
    "temp": (("MAX TEMP", "T MAX", "LIQUID TEMP."), ambient),
    "torque": (("TORQUE", "OUTPUT TORQUE", "T2", "M2"), torque),
    "ratio": (("RATIO", "GEAR RATIO"), ratio),
    "oil": (
        ("OIL", "LUBRICANT"),
        lambda r: pick(r, ("ISO VG 220", "ISO VG 320", "CLP 220", "SAE 90", "ISO VG 46")),
    ),
    "kva": (("RATED POWER", "POWER", "Sn", "RATING"), kva),
    "pri": (("PRI", "PRIMARY", "INPUT"), voltage),
    "sec": (("SEC", "SECONDARY", "OUTPUT"), voltage),
    "imp": (("IMPEDANCE", "Uk", "IMP."), lambda r: f"{_num(r, 2, 8, 1)}%"),
    "vector": (
        ("VECTOR GROUP", "CONN. SYMBOL"),
        lambda r: pick(r, ("Dyn11", "Yyn0", "Dyn5", "Yd11", "Ii0")),
    ),
    "cooling": (
        ("COOLING", "COOLING METHOD"),
        lambda r: pick(r, ("AN", "ONAN", "AF", "ONAF", "IC411")),
    ),
    "fad": (("FAD", "FREE AIR DEL.", "CAPACITY"), lambda r: f"{_num(r, 0.1, 40, 2)} m3/min"),
    "input": (
        ("INPUT",),
        lambda r: f"{pick(r, ('3PH', '1PH', '3AC', '1AC'))} {voltage(r)} {frequency(r)}",
    ),
    "output": (
        ("OUTPUT",),
        lambda r: (
            f"{pick(r, ('3PH', '3AC'))} 0-{pick(r, ('400', '480', '230'))}V 0-{pick(r, ('50', '400', '599'))}Hz"
        ),
    ),
}

# Which fields a given kind of equipment carries (first ones most likely).
KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "motor": (
        (
            "THREE PHASE INDUCTION MOTOR",
            "3-PHASE ASYNCHRONOUS MOTOR",
            "AC MOTOR",
            "INDUCTION MOTOR",
            "SINGLE PHASE MOTOR",
            "HIGH EFFICIENCY MOTOR",
            "DREHSTROMMOTOR",
            "TEFC MOTOR",
            "EXPLOSION PROOF MOTOR",
            "Three Phase Motor",
        ),
        (
            "model",
            "serial",
            "power",
            "voltage",
            "current",
            "freq",
            "speed",
            "cos",
            "eff",
            "ip",
            "ins",
            "duty",
            "date",
            "weight",
            "amb",
            "std",
            "frame",
            "brg_de",
            "brg_nde",
            "poles",
            "conn",
            "phase",
        ),
    ),
    "pump": (
        ("CENTRIFUGAL PUMP", "SUBMERSIBLE PUMP", "CIRCULATING PUMP", "GEAR PUMP", "BOOSTER PUMP"),
        (
            "model",
            "serial",
            "flow",
            "head",
            "power",
            "voltage",
            "current",
            "speed",
            "pressure",
            "temp",
            "ip",
            "date",
            "weight",
            "freq",
            "std",
        ),
    ),
    "compressor": (
        ("AIR COMPRESSOR", "SCREW COMPRESSOR", "PISTON COMPRESSOR", "ROTARY SCREW COMPRESSOR"),
        (
            "model",
            "serial",
            "fad",
            "pressure",
            "power",
            "voltage",
            "freq",
            "speed",
            "current",
            "date",
            "weight",
            "oil",
            "ip",
        ),
    ),
    "transformer": (
        (
            "DRY TYPE TRANSFORMER",
            "CONTROL TRANSFORMER",
            "POWER TRANSFORMER",
            "ISOLATION TRANSFORMER",
        ),
        (
            "model",
            "serial",
            "kva",
            "pri",
            "sec",
            "freq",
            "imp",
            "vector",
            "cooling",
            "ins",
            "date",
            "weight",
            "std",
            "phase",
            "amb",
        ),
    ),
    "gearbox": (
        ("GEAR REDUCER", "HELICAL GEARBOX", "WORM GEAR UNIT", "GEARED MOTOR", "SPEED REDUCER"),
        ("model", "serial", "ratio", "torque", "power", "speed", "oil", "date", "weight", "order"),
    ),
    "drive": (
        ("FREQUENCY INVERTER", "VARIABLE SPEED DRIVE", "AC DRIVE", "SERVO DRIVE", "SOFT STARTER"),
        (
            "model",
            "order",
            "serial",
            "input",
            "output",
            "power",
            "current",
            "ip",
            "date",
            "std",
            "amb",
        ),
    ),
}

_SYLLABLES = (
    "vol",
    "tra",
    "nor",
    "mat",
    "kes",
    "ler",
    "dyn",
    "elec",
    "tron",
    "mag",
    "ber",
    "ko",
    "ta",
    "ri",
    "zen",
    "hy",
    "dro",
    "pum",
    "tec",
    "ax",
    "ion",
    "gal",
    "ven",
    "sta",
    "mo",
    "tor",
    "fer",
    "lux",
    "ar",
    "dal",
    "sin",
    "wei",
    "han",
    "shin",
    "lo",
    "ren",
    "qua",
)
_SUFFIXES = (
    "ELECTRIC",
    "MOTORS",
    "PUMPEN",
    "DRIVES",
    "MACHINERY",
    "INDUSTRIES",
    "CO., LTD.",
    "GMBH",
    "AG",
    "S.A.",
    "INC.",
    "KG",
    "S.p.A.",
    "ELEKTROMOTOREN",
    "POWER",
    "GROUP",
    "ENGINEERING",
    "TECHNIK",
    "(PTY) LTD",
    "CORP.",
)
_COUNTRIES = (
    "GERMANY",
    "CHINA",
    "ITALY",
    "JAPAN",
    "USA",
    "FRANCE",
    "INDIA",
    "BRAZIL",
    "TURKEY",
    "KOREA",
    "SPAIN",
    "POLAND",
    "CZECH REPUBLIC",
    "SWEDEN",
    "TAIWAN",
    "MEXICO",
)


def maker_name(rng: Rng) -> str:
    word = "".join(pick(rng, _SYLLABLES) for _ in range(int(rng.integers(2, 4))))
    word = word.upper() if rng.random() < 0.8 else word.capitalize()
    if rng.random() < 0.6:
        word += " " + pick(rng, _SUFFIXES)
    return word


@dataclass
class Field:
    """One key/value pair; ``key`` may be empty (value-only rows such as "IP55")."""

    key: str
    value: str


@dataclass
class PlateContent:
    kind: str
    maker: str
    title: str
    fields: list[Field]
    footer: list[str] = field(default_factory=list)
    fine_print: list[str] = field(default_factory=list)
    marks: list[str] = field(default_factory=list)
    colon: str = ":"  # separators the layout may insert, already mapped onto the charset
    space: str = " "

    def join(self, key: str, value: str, colon: bool) -> str:
        """'KEY: VALUE' or 'KEY VALUE' using only characters of the charset."""
        if not key:
            return value
        return f"{key}{self.colon if colon else ''}{self.space}{value}"


class Sanitizer:
    """Maps text onto a charset: case-folds where that helps, turns the rest into spaces."""

    def __init__(self, charset: str) -> None:
        self.charset = charset
        self.allowed = set(charset)
        self.has_space = " " in self.allowed
        self._table: dict[str, str] = {}

    def _map(self, ch: str) -> str:
        if ch in self.allowed:
            return ch
        special = {"\u00b0": "", "\u03c6": "phi"}  # 40°C -> 40C, cos φ -> cos phi
        if ch in special and all(c in self.allowed for c in special[ch]):
            return special[ch]
        for alt in (ch.upper(), ch.lower()):
            if alt in self.allowed:
                return alt
        return " "

    def __call__(self, text: str) -> str:
        out = []
        for ch in text:
            m = self._table.get(ch)
            if m is None:
                m = self._table[ch] = self._map(ch)
            out.append(m)
        s = " ".join("".join(out).split())
        if not self.has_space:
            s = s.replace(" ", "")
        return s


def _case(rng: Rng, style: str, text: str) -> str:
    if style == "upper":
        return (
            text.upper() if not any(u in text for u in ("kW", "Hz", "r/min", "kg", "kVA")) else text
        )
    if style == "title" and text.isupper() and len(text) > 3:
        return text.title()
    return text


def make_content(rng: Rng, sanitize: Sanitizer, max_fields: int = 12) -> PlateContent:
    """Draw the text of one nameplate.  All strings are already mapped onto the charset."""
    kind = pick(rng, tuple(KINDS))
    titles, names = KINDS[kind]
    n = int(rng.integers(4, max_fields + 1))
    # The first fields are the most common ones; the rest are drawn without replacement.
    head_n = min(3, n)
    rest = [names[i] for i in rng.permutation(len(names) - head_n) + head_n][: n - head_n]
    chosen = list(names[:head_n]) + rest
    key_style = "upper" if rng.random() < 0.7 else ("title" if rng.random() < 0.7 else "mixed")
    fields = []
    for name in chosen:
        keys, gen = FIELDS[name]
        key = _case(rng, key_style, pick(rng, keys))
        value = gen(rng)
        if rng.random() < 0.08:
            key = ""
        key, value = sanitize(key), sanitize(value)
        if value:
            fields.append(Field(key, value))
    if rng.random() < 0.12:  # a random code row: defeats any language prior on keys
        fields.append(
            Field(
                sanitize(letters(rng, int(rng.integers(1, 4)))),
                sanitize(alnum(rng, int(rng.integers(3, 9)))),
            )
        )
    title = pick(rng, titles)
    footer = []
    if rng.random() < 0.5:
        footer.append(f"MADE IN {pick(rng, _COUNTRIES)}")
    if rng.random() < 0.3:
        footer.append(
            f"www.{pick(rng, _SYLLABLES)}{pick(rng, _SYLLABLES)}.{pick(rng, ('com', 'de', 'it', 'cn', 'net'))}"
        )
    if rng.random() < 0.2:
        footer.append(phone(rng))
    fine = []
    for _ in range(int(rng.integers(0, 3))):
        fine.append(sanitize(f"{maker_name(rng)} {digits(rng, 5)} {pick(rng, _COUNTRIES)}"))
    marks = [m for m in ("CE", "UL", "CCC", "EAC", "IE3") if rng.random() < 0.12]
    return PlateContent(
        kind=kind,
        maker=sanitize(maker_name(rng)),
        title=sanitize(_case(rng, key_style, title)),
        fields=fields,
        footer=[s for s in (sanitize(f) for f in footer) if s],
        fine_print=[f for f in fine if f],  # rendered unreadably small, labelled "###"
        marks=[s for s in (sanitize(m) for m in marks) if s],
        colon=":" if ":" in sanitize.allowed else "",
        space=" " if sanitize.has_space else "",
    )
