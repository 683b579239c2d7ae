#!/usr/bin/env python3
"""Generates pii_corpus.jsonl: labelled WhatsApp-style customer messages for the PII redactor.

Deterministic (fixed seed): `python3 gen_pii_corpus.py > pii_corpus.jsonl` regenerates the
committed file byte for byte; `python3 gen_pii_corpus.py SEED > /tmp/x.jsonl` makes a held-out
one (`bench-pii /tmp/x.jsonl`).

Each line: {"text": ..., "spans": [{"start", "end", "type"}], "lang": "es"|"pt"|"en",
"country": ..., "traps": [...]}. Offsets are UTF-8 bytes, end exclusive; a span covers the
personal value only (never the context word before it, never the city after an address).

About half the messages carry personal data; the other half are clean but full of look-alikes
(order, tracking and invoice numbers, prices, dates, SKUs, valid EAN-13 barcodes, product
links, times, percentages, Luhn-invalid 16-digit numbers, street words without a house number).
PII messages also carry traps, so precision is measured where it is hard. Check digits (Luhn,
mod-97, CPF/CNPJ mod-11, DNI/NIE mod-23, EAN-13, CURP, RFC, CLABE) are computed, never
hard-coded.

Mexico's CURP, RFC, voter-card key and CLABE, passports, and CLABEs after account phrases come
in extra messages generated after the rest, so adding them left every earlier message as it was.
"""

import json
import random
import re
import sys

# A different seed (first argument) gives a fresh corpus of the same make-up: a held-out check
# that the detectors were not tuned to one sample.
R = random.Random(int(sys.argv[1]) if len(sys.argv) > 1 else 20240517)
N_PII = 820
N_CLEAN = 800

# --------------------------------------------------------------------------- check digits


def luhn_digit(partial):
    s = 0
    for i, c in enumerate(reversed(partial)):
        d = int(c)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        s += d
    return str((10 - s % 10) % 10)


def luhn_ok(num):
    return luhn_digit(num[:-1]) == num[-1]


def ean13(prefix):
    body = prefix + "".join(R.choice("0123456789") for _ in range(12 - len(prefix)))
    s = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    return body + str((10 - s % 10) % 10)


def cpf():
    while True:
        d = [R.randrange(10) for _ in range(9)]
        if len(set(d)) > 1:
            break
    for n in (9, 10):
        s = sum(d[i] * (n + 1 - i) for i in range(n))
        r = (s * 10) % 11
        d.append(0 if r == 10 else r)
    return "".join(map(str, d))


def cnpj():
    d = [R.randrange(10) for _ in range(8)] + [0, 0, 0, 1]
    for w in ([5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2], [6, 5, 4, 3, 2, 9, 8, 7, 6, 5, 4, 3, 2]):
        r = sum(a * b for a, b in zip(w, d)) % 11
        d.append(0 if r < 2 else 11 - r)
    return "".join(map(str, d))


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def iban(cc, bban):
    conv = "".join(str(int(c, 36)) for c in (bban + cc + "00").upper())
    check = 98 - int(conv) % 97
    return f"{cc}{check:02d}{bban}"


def digits(n):
    return "".join(R.choice("0123456789") for _ in range(n))


# --------------------------------------------------------------------------- PII values

FIRST = {
    "es": ["juan", "maría", "andrés", "camila", "valentina", "santiago", "daniela", "carlos",
           "luisa", "sofía", "jorge", "paola", "diego", "natalia", "alejandro", "lucía",
           "javier", "marta", "pablo", "elena", "fernando", "isabel", "ximena", "rodrigo"],
    "pt": ["joão", "ana", "pedro", "mariana", "lucas", "beatriz", "gabriel", "juliana",
           "rafael", "fernanda", "thiago", "larissa", "bruno", "camila", "tiago", "inês",
           "rui", "catarina", "gonçalo", "leonor"],
    "en": ["john", "emily", "michael", "sarah", "david", "jessica", "chris", "ashley",
           "james", "megan", "robert", "lauren", "kevin", "amanda", "brian", "nicole"],
}
LAST = {
    "es": ["gómez", "rodríguez", "martínez", "lópez", "garcía", "pérez", "sánchez", "ramírez",
           "torres", "díaz", "moreno", "jiménez", "ruiz", "vargas", "castro", "ortiz", "muñoz"],
    "pt": ["silva", "santos", "oliveira", "souza", "pereira", "costa", "ferreira", "almeida",
           "carvalho", "ribeiro", "gomes", "martins", "rodrigues", "sousa", "fernandes"],
    "en": ["smith", "johnson", "williams", "brown", "jones", "miller", "davis", "wilson",
           "anderson", "taylor", "thomas", "moore", "martin", "jackson", "white"],
}
DOMAINS = {
    "CO": ["gmail.com", "hotmail.com", "outlook.com", "yahoo.com", "une.net.co",
           "correo.unal.edu.co", "empresa.com.co", "live.com", "icloud.com"],
    "MX": ["gmail.com", "hotmail.com", "outlook.com", "yahoo.com.mx", "prodigy.net.mx",
           "live.com.mx", "icloud.com"],
    "ES": ["gmail.com", "hotmail.es", "outlook.es", "yahoo.es", "telefonica.net",
           "icloud.com", "protonmail.com"],
    "BR": ["gmail.com", "hotmail.com", "outlook.com.br", "yahoo.com.br", "uol.com.br",
           "bol.com.br", "terra.com.br", "icloud.com"],
    "PT": ["gmail.com", "sapo.pt", "hotmail.com", "outlook.pt", "netcabo.pt", "iol.pt"],
    "US": ["gmail.com", "yahoo.com", "outlook.com", "aol.com", "icloud.com",
           "comcast.net", "mail.company.com"],
}
ACCENTS = str.maketrans("áéíóúñãõçâêôüà", "aeiounaocaeoua")


def email(lang, country):
    f = R.choice(FIRST[lang]).translate(ACCENTS)
    l = R.choice(LAST[lang]).translate(ACCENTS)
    d = R.choice(DOMAINS[country])
    style = R.randrange(9)
    local = [f"{f}.{l}", f"{f}{l}{R.randrange(1, 99)}", f"{f[0]}{l}", f"{f}_{l}",
             f"{f}.{l}{R.randrange(70, 99)}", f"{f}+compras", f"{l}.{f}", f"{f}{R.randrange(1000, 9999)}",
             f"{f}-{l}"][style]
    e = f"{local}@{d}"
    if R.random() < 0.08:
        e = e.upper()
    elif R.random() < 0.1:
        e = e[0].upper() + e[1:]
    return e


NANP_AREAS = ["212", "305", "312", "415", "512", "617", "646", "702", "713", "786", "818",
              "917", "954", "972", "206", "303", "404", "480", "503", "619"]
BR_DDD = ["11", "12", "13", "19", "21", "22", "27", "31", "34", "41", "47", "48", "51", "61",
          "62", "71", "81", "85", "91", "92", "98"]
MX_AREAS2 = ["55", "33", "81"]
MX_AREAS3 = ["222", "442", "477", "614", "664", "998", "999", "686"]


def phone(country, announced=True):
    c = country
    if c == "CO":
        if R.random() < 0.8:
            n = "3" + R.choice("0123451") + R.choice("0123456789") + digits(7)
        else:
            n = "60" + R.choice("124578") + R.choice("2345678") + digits(6)
        a, b_, cc = n[:3], n[3:6], n[6:]
        return R.choice([n, f"{a} {b_} {cc}", f"{a}-{b_}-{cc}", f"+57 {a} {b_} {cc}",
                         f"{a}.{b_}.{cc}", f"(+57) {a} {b_} {cc}", f"{a} {b_} {cc[:2]} {cc[2:]}",
                         f"+57{n}", f"{a} {b_}{cc}", f"+57 {n}", f"57{n}"
                         if R.random() < 0.3 else f"{a} {b_} {cc}"])
    if c == "BR":
        ddd = R.choice(BR_DDD)
        if R.random() < 0.85 or not announced:
            n = "9" + R.choice("6789") + digits(7)
            f1, f2 = n[:5], n[5:]
            return R.choice([f"({ddd}) {f1}-{f2}", f"{ddd} {f1}-{f2}", f"{ddd}{n}",
                             f"+55 {ddd} {f1}-{f2}", f"+55 ({ddd}) {f1}-{f2}", f"+55{ddd}{n}",
                             f"({ddd}) {f1} {f2}", f"{ddd} 9 {n[1:5]}-{f2}", f"{f1}-{f2}"
                             if announced else f"({ddd}) {f1}-{f2}"])
        n = R.choice("2345") + digits(7)
        return R.choice([f"({ddd}) {n[:4]}-{n[4:]}", f"{n[:4]}-{n[4:]}", f"+55 {ddd} {n[:4]}-{n[4:]}"])
    if c == "MX":
        if R.random() < 0.6:
            a = R.choice(MX_AREAS2)
            n = a + R.choice("23456789") + digits(7)
            return R.choice([f"{a} {n[2:6]} {n[6:]}", n, f"({a}) {n[2:6]} {n[6:]}",
                             f"+52 {a} {n[2:6]} {n[6:]}", f"+52 1 {a} {n[2:6]} {n[6:]}",
                             f"{a}-{n[2:6]}-{n[6:]}", f"+52{n}"])
        a = R.choice(MX_AREAS3)
        n = a + R.choice("23456789") + digits(6)
        return R.choice([f"{a} {n[3:6]} {n[6:]}", n, f"+52 {a} {n[3:6]} {n[6:]}", f"({a}) {n[3:6]} {n[6:]}"])
    if c == "ES":
        if R.random() < 0.8:
            n = R.choice("67") + digits(8)
            return R.choice([f"{n[:3]} {n[3:5]} {n[5:7]} {n[7:]}", n, f"{n[:3]} {n[3:6]} {n[6:]}",
                             f"+34 {n[:3]} {n[3:5]} {n[5:7]} {n[7:]}", f"+34 {n}", f"+34{n}",
                             f"{n[:3]}-{n[3:6]}-{n[6:]}"])
        n = "9" + R.choice("1345") + digits(7)
        return R.choice([f"{n[:2]} {n[2:5]} {n[5:7]} {n[7:]}", f"{n[:3]} {n[3:5]} {n[5:7]} {n[7:]}", n,
                         f"+34 {n[:2]} {n[2:5]} {n[5:7]} {n[7:]}"])
    if c == "PT":
        if R.random() < 0.8:
            n = "9" + R.choice("1236") + digits(7)
            return R.choice([f"{n[:3]} {n[3:6]} {n[6:]}", n, f"+351 {n[:3]} {n[3:6]} {n[6:]}",
                             f"+351 {n}", f"+351{n}"])
        n = "2" + R.choice("12") + digits(7)
        return R.choice([f"{n[:2]} {n[2:5]} {n[5:]}", f"{n[:3]} {n[3:6]} {n[6:]}",
                         f"+351 {n[:2]} {n[2:5]} {n[5:]}"])
    # US
    a = R.choice(NANP_AREAS)
    x = R.choice("23456789") + digits(2)
    s = digits(4)
    return R.choice([f"({a}) {x}-{s}", f"{a}-{x}-{s}", f"({a}){x}-{s}", f"{a}.{x}.{s}", f"{a} {x} {s}",
                     f"+1 {a} {x} {s}", f"+1 ({a}) {x}-{s}", f"1-{a}-{x}-{s}", f"{a}{x}{s}",
                     f"+1-{a}-{x}-{s}"])


def card():
    kind = R.choices(["visa", "mc", "mc2", "amex", "diners", "discover", "elo", "hiper", "jcb", "visa13", "maestro19"],
                     [30, 20, 5, 10, 4, 5, 6, 3, 3, 1, 2])[0]
    if kind == "visa":
        p, n = "4" + digits(5), 16
    elif kind == "visa13":
        p, n = "4" + digits(5), 13
    elif kind == "mc":
        p, n = "5" + R.choice("12345") + digits(4), 16
    elif kind == "mc2":
        p, n = str(R.randrange(2221, 2721)) + digits(2), 16
    elif kind == "amex":
        p, n = R.choice(["34", "37"]) + digits(4), 15
    elif kind == "diners":
        p, n = R.choice(["36", "38", "300", "305"]), 14
    elif kind == "discover":
        p, n = R.choice(["6011", "65", "644"]), 16
    elif kind == "elo":
        p, n = R.choice(["636368", "504175", "451416", "636297"]), 16
    elif kind == "hiper":
        p, n = "606282", 16
    elif kind == "jcb":
        p, n = str(R.randrange(3528, 3590)), 16
    else:
        p, n = R.choice(["6759", "5018", "6763"]), 19
    body = p + digits(n - len(p) - 1)
    num = body + luhn_digit(body)
    style = R.randrange(10)
    if n == 15:
        groups = [num[:4], num[4:10], num[10:]]
    elif n == 14:
        groups = [num[:4], num[4:10], num[10:]]
    else:
        groups = [num[i:i + 4] for i in range(0, n, 4)]
    if style < 5:
        return " ".join(groups)
    if style < 7:
        return "-".join(groups)
    if style < 9:
        return num
    return "  ".join(groups)


def bad_card():
    while True:
        num = R.choice("3456") + digits(15)
        if not luhn_ok(num):
            break
    g = [num[i:i + 4] for i in range(0, 16, 4)]
    return R.choice([" ".join(g), "-".join(g), num])


def iban_value(country):
    if country == "ES":
        v = iban("ES", digits(20))
    elif country == "PT":
        v = iban("PT", digits(21))
    elif country == "BR":
        v = iban("BR", digits(23) + R.choice("CP") + R.choice("123"))
    elif country == "US":
        v = R.choice([iban("DE", digits(18)), iban("GB", R.choice(["NWBK", "BARC", "HSBC", "LOYD"]) + digits(14)),
                      iban("FR", digits(23)), iban("NL", R.choice(["ABNA", "INGB", "RABO"]) + digits(10))])
    else:  # CO/MX people with a European account
        v = R.choice([iban("ES", digits(20)), iban("DE", digits(18)), iban("IT", R.choice("ABCDEFGHIJKLMNOPRSTUVWXYZ") + digits(10) + digits(12))])
    if R.random() < 0.6:
        v = " ".join(v[i:i + 4] for i in range(0, len(v), 4))
    if R.random() < 0.05:
        v = v.lower()
    return v


def cedula():
    if R.random() < 0.6:
        n = "10" + R.choice("0123456789") + digits(7) if R.random() < 0.7 else "11" + R.choice("0123") + digits(7)
    elif R.random() < 0.85:
        n = R.choice(["79", "80", "52", "43", "71", "19", "39", "51", "91", "93"]) + digits(6)
    else:
        n = R.choice("123456789") + digits(6)
    r = R.random()
    if r < 0.35:
        s = n[::-1]
        parts = [s[i:i + 3][::-1] for i in range(0, len(s), 3)][::-1]
        return ".".join(parts)
    return n


def cpf_value():
    v = cpf()
    return R.choice([f"{v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}", f"{v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}", v, f"{v[:9]}-{v[9:]}"])


def cnpj_value():
    v = cnpj()
    return R.choice([f"{v[:2]}.{v[2:5]}.{v[5:8]}/{v[8:12]}-{v[12:]}", v])


def dni_value():
    n = R.randrange(10_000_000, 99_999_999)
    l = DNI_LETTERS[n % 23]
    if R.random() < 0.1:
        l = l.lower()
    s = str(n)
    return R.choice([f"{s}{l}", f"{s}{l}", f"{s}-{l}", f"{s} {l}", f"{s[:2]}.{s[2:5]}.{s[5:]}-{l}"])


def nie_value():
    p = R.choice("XYZ")
    n = R.randrange(0, 9_999_999)
    l = DNI_LETTERS[(int("XYZ".index(p)) * 10_000_000 + n) % 23]
    s = f"{n:07d}"
    return R.choice([f"{p}{s}{l}", f"{p}{s}{l}", f"{p}-{s}-{l}", f"{p} {s} {l}"])


def ssn_value(dashed=True):
    while True:
        a = R.randrange(1, 900)
        if a != 666:
            break
    g = R.randrange(1, 100)
    s = R.randrange(1, 10000)
    if dashed:
        return f"{a:03d}-{g:02d}-{s:04d}"
    return R.choice([f"{a:03d}{g:02d}{s:04d}", f"{a:03d} {g:02d} {s:04d}"])


def ipv4():
    r = R.random()
    if r < 0.3:
        return f"192.168.{R.randrange(0, 3)}.{R.randrange(2, 254)}"
    if r < 0.4:
        return f"10.{R.randrange(0, 255)}.{R.randrange(0, 255)}.{R.randrange(1, 254)}"
    first = R.choice([181, 186, 190, 200, 201, 177, 189, 187, 83, 88, 95, 73, 98, 24, 67, 172])
    return f"{first}.{R.randrange(0, 256)}.{R.randrange(0, 256)}.{R.randrange(1, 255)}"


def ipv6():
    g = [f"{R.randrange(0, 65536):x}" for _ in range(8)]
    r = R.random()
    if r < 0.3:
        return ":".join(g)
    if r < 0.5:
        return ":".join(f"{int(x, 16):04x}" for x in g)
    if r < 0.8:
        return f"2001:db8::{g[5]}:{g[6]}:{g[7]}"
    return f"fe80::{g[4]}:{g[5]}:{g[6]}:{g[7]}"


def ip_value():
    return ipv4() if R.random() < 0.78 else ipv6()


SITES = ["tienda.kaiu.co", "panel.mitienda.com", "app.envios.co", "portal.loja.com.br",
         "admin.shop.example.com", "files.empresa.es", "api.pagos.io", "drive.nuvem.pt"]


def tokenish(n):
    return "".join(R.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(n))


def url_cred():
    site = R.choice(SITES)
    r = R.randrange(7)
    user = R.choice(FIRST["es"] + FIRST["en"]).translate(ACCENTS)
    if r == 0:
        return f"https://{user}:{tokenish(10)}@{site}/login"
    if r == 1:
        return f"ftp://{user}:{tokenish(8)}@{site}/facturas"
    if r == 2:
        return f"https://{site}/reset?token={tokenish(24)}"
    if r == 3:
        return f"https://{site}/api/v1/orders?id={R.randrange(1000, 99999)}&api_key={tokenish(20)}"
    if r == 4:
        return f"https://{site}/login?user={user}&password={tokenish(9)}"
    if r == 5:
        return f"https://{site}/download/factura.pdf?X-Amz-Signature={tokenish(32).lower()}&expires=3600"
    return f"https://{site}/track?access_token={tokenish(28)}"


MONTHS = {
    "es": ["enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"],
    "pt": ["janeiro", "fevereiro", "março", "abril", "maio", "junho", "julho", "agosto",
           "setembro", "outubro", "novembro", "dezembro"],
    "en": ["January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"],
}


def dob_value(lang):
    y = R.randrange(1945, 2008)
    m = R.randrange(1, 13)
    d = R.randrange(1, 29)
    r = R.random()
    if lang == "en":
        if r < 0.45:
            return f"{m:02d}/{d:02d}/{y}"
        if r < 0.8:
            return f"{MONTHS['en'][m - 1]} {d}, {y}"
        if r < 0.9:
            return f"{y}-{m:02d}-{d:02d}"
        return f"{d} {MONTHS['en'][m - 1]} {y}"
    if r < 0.45:
        return f"{d:02d}/{m:02d}/{y}"
    if r < 0.55:
        return f"{d}/{m}/{y}"
    if r < 0.62:
        return f"{d:02d}-{m:02d}-{y}"
    if r < 0.67:
        return f"{d:02d}.{m:02d}.{y}"
    if r < 0.72:
        return f"{y}-{m:02d}-{d:02d}"
    if r < 0.77:
        return f"{d:02d}/{m:02d}/{y % 100:02d}"
    return f"{d} de {MONTHS[lang][m - 1]} de {y}"


CO_NAMED = ["Boyacá", "El Dorado", "Caracas", "Américas", "Primero de Mayo", "Ciudad de Cali",
            "Suba", "Chile", "Circunvalar", "Las Vegas", "Nutibara", "Oriental", "Santander"]


def addr_co():
    t = R.choice(["Calle", "Calle", "Cl", "Cll", "Carrera", "Cra", "Cra.", "Kr", "Kra", "Av.",
                  "Avenida", "Diagonal", "Dg", "Transversal", "Tv", "Ak", "Av", "Cl.", "CALLE", "KR"])
    if t.startswith("Av") and R.random() < 0.5:
        street = R.choice(CO_NAMED)
    elif t.startswith("Av") and R.random() < 0.3:
        street = f"{R.choice(['Calle', 'Carrera', 'Cra'])} {R.randrange(1, 170)}"
    else:
        street = str(R.randrange(1, 170))
        if R.random() < 0.25:
            street += R.choice("ABC")
        elif R.random() < 0.1:
            street += " " + R.choice("ABCD")
        if R.random() < 0.08:
            street += " Bis"
        if R.random() < 0.1:
            street += R.choice([" Sur", " sur", " Este"])
    marker = R.choice(["#", "# ", "#", "No.", "No. ", "N°", "No ", "#", "nro "])
    if marker in ("#", "No.", "N°") and R.random() < 0.5:
        marker = " " + marker
    elif not marker.startswith(" "):
        marker = " " + marker
    n1 = str(R.randrange(1, 140)) + (R.choice("ABC") if R.random() < 0.15 else "")
    if R.random() < 0.05:
        n1 += " " + R.choice("ABC")
    n2 = str(R.randrange(1, 99))
    sep = R.choice(["-", "-", "-", " - "])
    a = f"{t} {street}{marker}{n1}{sep}{n2}"
    if "# " not in marker and marker.strip() == "#" and R.random() < 0.5:
        a = f"{t} {street} #{n1}{sep}{n2}"
    r = R.random()
    if r < 0.18:
        a += f" apto {R.randrange(101, 1504)}"
    elif r < 0.26:
        a += f" apto. {R.randrange(101, 904)}"
    elif r < 0.32:
        a += f" torre {R.randrange(1, 6)} apto {R.randrange(101, 1204)}"
    elif r < 0.36:
        a += f" int {R.randrange(1, 9)}"
    elif r < 0.40:
        a += f" casa {R.randrange(1, 40)}"
    elif r < 0.43:
        a += f" of {R.randrange(201, 905)}"
    elif r < 0.46:
        a += f", apto {R.randrange(101, 904)}"
    if R.random() < 0.15:
        a = a.lower()
    return a


BR_STREETS = ["das Flores", "Augusta", "Oscar Freire", "XV de Novembro", "25 de Março",
              "Sete de Setembro", "Barão de Itapetininga", "dos Andradas", "Voluntários da Pátria",
              "Paulista", "Brigadeiro Faria Lima", "Rio Branco", "Afonso Pena", "Getúlio Vargas",
              "Santos Dumont", "Tiradentes", "da Consolação", "Bela Cintra", "Haddock Lobo",
              "Padre Anchieta", "Marechal Deodoro", "Dom Pedro II", "das Palmeiras", "Amazonas",
              "Dr. Arnaldo", "Prof. Alfonso Bovero", "Brig. Faria Lima", "Pres. Vargas",
              "Gen. Osório", "Cel. Oscar Porto"]


def addr_br():
    t = R.choice(["Rua", "Rua", "Rua", "R.", "Av.", "Avenida", "Alameda", "Travessa", "Estrada"])
    name = R.choice(BR_STREETS)
    num = str(R.randrange(1, 4000))
    sep = R.choice([", ", ", ", ", ", " ", ", nº "])
    a = f"{t} {name}{sep}{num}"
    r = R.random()
    if r < 0.2:
        a += f" - apto {R.randrange(11, 304)}"
    elif r < 0.3:
        a += f", apto {R.randrange(11, 1204)}"
    elif r < 0.37:
        a += f" ap {R.randrange(11, 304)}"
    elif r < 0.43:
        a += f", bloco {R.choice('ABCD')}, apto {R.randrange(11, 304)}"
    elif r < 0.48:
        a += f", casa {R.randrange(1, 5)}"
    elif r < 0.52:
        a += f" sala {R.randrange(101, 2001)}"
    if R.random() < 0.12:
        a = a.lower()
    return a


PT_STREETS = ["do Ouro", "da Liberdade", "Augusta", "de Santa Catarina", "dos Clérigos",
              "da Prata", "Almirante Reis", "de Ceuta", "Garrett", "da Boavista", "de Cedofeita",
              "do Carmo", "Marquês de Pombal", "da República"]


def addr_pt():
    t = R.choice(["Rua", "Rua", "Av.", "Avenida", "Travessa", "Largo", "Praça"])
    a = f"{t} {R.choice(PT_STREETS)}{R.choice([', ', ' ', ', nº '])}{R.randrange(1, 400)}"
    r = R.random()
    if r < 0.45:
        a += f", {R.randrange(1, 9)}º {R.choice(['Esq', 'Dto', 'Esq.', 'Dto.', 'A', 'B', 'Frente'])}"
    elif r < 0.55:
        a += ", r/c"
    elif r < 0.65:
        a += f" {R.randrange(1, 6)}º andar"
    return a


ES_STREETS = ["Mayor", "de Alcalá", "Serrano", "Gran Vía", "del Carmen", "de la Princesa",
              "Fuencarral", "de Goya", "Velázquez", "de Sants", "Diagonal", "de Colón",
              "Real", "de la Constitución", "de Gracia", "San Vicente", "Larios", "Toledo"]


def addr_es():
    t = R.choice(["C/", "C/", "Calle", "Calle", "Avda.", "Avenida", "Paseo", "Plaza", "Ronda", "Camino", "Pza.", "C."])
    name = R.choice(ES_STREETS)
    if t == "C/" and R.random() < 0.5:
        head = f"C/{name}"
    else:
        head = f"{t} {name}"
    a = f"{head}{R.choice([' ', ', ', ', nº ', ' nº '])}{R.randrange(1, 200)}"
    r = R.random()
    if r < 0.35:
        a += f", {R.randrange(1, 9)}º {R.choice('ABCD')}"
    elif r < 0.45:
        a += f", {R.randrange(1, 9)}º{R.choice('ABCD')}"
    elif r < 0.55:
        a += f", {R.randrange(1, 9)}º {R.choice(['izq', 'dcha', 'izda.', 'izquierda'])}"
    elif r < 0.6:
        a += f", {R.randrange(1, 9)}º {R.randrange(1, 4)}ª"
    elif r < 0.66:
        a += f", piso {R.randrange(1, 9)}, puerta {R.randrange(1, 6)}"
    elif r < 0.7:
        a += ", bajo"
    if R.random() < 0.1:
        a = a.lower()
    return a


MX_STREETS = ["Insurgentes Sur", "Durango", "5 de Mayo", "16 de Septiembre", "Reforma", "Álvaro Obregón", "Amsterdam",
              "Chapultepec", "Madero", "Juárez", "Hidalgo", "Morelos", "Vallarta", "Revolución"]


def addr_mx():
    t = R.choice(["Calle", "Av.", "Avenida", "Calle"])
    a = f"{t} {R.choice(MX_STREETS)}{R.choice([' ', ' ', ' #', ' No. '])}{R.randrange(1, 3000)}"
    r = R.random()
    if r < 0.25:
        a += f" int. {R.randrange(1, 30)}"
    elif r < 0.4:
        a += f", depto {R.randrange(101, 804)}"
    return a


US_NAMES = ["Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill",
            "Sunset", "Park", "Highland", "Lincoln", "Madison", "Jefferson", "Evergreen",
            "Pennsylvania", "Ocean", "Valley", "Spring", "Church", "Mill"]


def ordinal(n):
    if 10 <= n % 100 <= 13:
        return f"{n}th"
    return f"{n}" + {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def addr_us():
    num = str(R.randrange(1, 9999))
    r = R.random()
    if r < 0.15:
        name = ordinal(R.randrange(1, 120))
    else:
        name = R.choice(US_NAMES)
    if R.random() < 0.2:
        name = R.choice(["N", "S", "E", "W", "North", "West"]) + " " + name
    suffix = R.choice(["St", "St.", "Street", "Ave", "Ave.", "Avenue", "Rd", "Road", "Blvd", "Dr",
                       "Drive", "Ln", "Lane", "Ct", "Way", "Terrace", "Pl", "Pkwy"])
    a = f"{num} {name} {suffix}"
    if R.random() < 0.1:
        a += " " + R.choice(["NW", "NE", "SW", "SE"])
    r = R.random()
    if r < 0.2:
        a += f" Apt {R.randrange(1, 40)}{R.choice(['', 'A', 'B', 'C'])}"
    elif r < 0.3:
        a += f", Apt {R.randrange(1, 900)}"
    elif r < 0.38:
        a += f" Suite {R.randrange(100, 900)}"
    elif r < 0.42:
        a += f" Unit {R.randrange(1, 30)}"
    if R.random() < 0.1:
        a = a.lower()
    return a


def address(country):
    return {"CO": addr_co, "BR": addr_br, "PT": addr_pt, "ES": addr_es, "MX": addr_mx,
            "US": addr_us}[country]()


# --------------------------------------------------------------------------- traps


def price(country):
    if country == "CO":
        v = R.randrange(5, 2000) * 1000 + R.choice([0, 0, 900, 500])
        s = f"{v:,}".replace(",", ".")
        return R.choice([f"${s}", f"$ {s}", f"{s} pesos", f"COP {s}", f"${s} COP"])
    if country == "MX":
        v = R.randrange(49, 9999)
        return R.choice([f"${v}", f"${v:,}.00", f"{v} pesos", f"MXN {v}", f"$ {v:,}"])
    if country == "BR":
        v = R.randrange(9, 4000)
        c = R.randrange(0, 100)
        s = f"{v:,}".replace(",", ".")
        return R.choice([f"R$ {s},{c:02d}", f"R${s},{c:02d}", f"R$ {v}", f"{s},{c:02d} reais"])
    if country in ("ES", "PT"):
        v = R.randrange(5, 2500)
        c = R.randrange(0, 100)
        s = f"{v:,}".replace(",", ".")
        return R.choice([f"{s},{c:02d} €", f"{s}€", f"€{s}", f"{v},{c:02d}€", f"{s} euros"])
    v = R.randrange(5, 2500)
    return R.choice([f"${v}.{R.randrange(0, 100):02d}", f"US$ {v}.99", f"${v:,}", f"{v} dollars", f"USD {v}"])


def order_no():
    return R.choice([f"#{R.randrange(100000000, 999999999)}", f"#{R.randrange(1000, 99999)}",
                     f"{R.randrange(1000, 9999)}-{R.randrange(1000, 9999)}", str(R.randrange(10000, 9999999)),
                     f"2000{digits(12)}", f"{digits(13)}-01", f"#{R.randrange(1000000000, 9999999999)}",
                     f"{R.choice('ABCDEFGHJK')}{R.randrange(10000, 99999)}"])


def ups():
    body = "1Z" + "".join(R.choice("0123456789ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(16))
    return body


def tracking():
    return R.choice([ups(), f"{R.choice(['AA', 'QB', 'LB', 'OJ', 'NX'])}{digits(9)}BR",
                     f"RR{digits(9)}PT", f"9400 {digits(4)} {digits(4)} {digits(4)} {digits(4)} {digits(2)}",
                     f"94001{digits(17)}", f"{R.randrange(2, 9)}{digits(9)}", digits(12)])


def sku():
    return R.choice([f"SKU {R.choice(['ABC', 'KAI', 'CRM', 'SHP', 'JAB'])}-{R.randrange(100, 99999)}",
                     f"ref. {R.choice(['KAI', 'LOC', 'ACE'])}-{R.randrange(10, 9999):04d}",
                     f"modelo X{R.randrange(100, 999)}", f"SKU {R.randrange(100000, 9999999)}"])


def ean():
    return ean13(R.choice(["770", "770", "789", "790", "750", "84", "560", "0", "1"]))


def plain_date(lang):
    y = R.choice([2023, 2024, 2024, 2025])
    m = R.randrange(1, 13)
    d = R.randrange(1, 29)
    return R.choice([f"{d:02d}/{m:02d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{d}/{m}", f"{d:02d}.{m:02d}.{y}",
                     f"{d} de {MONTHS['es' if lang == 'en' else lang][m - 1]}" if lang != "en" else f"{MONTHS['en'][m - 1]} {d}, {y}",
                     f"{d:02d}-{m:02d}-{y}"])


def time_str():
    return R.choice([f"{R.randrange(7, 12)}:{R.choice(['00', '15', '30', '45'])}",
                     f"{R.randrange(1, 12)}pm", f"{R.randrange(13, 20)}:{R.choice(['00', '30'])}",
                     f"{R.randrange(8, 18)}h{R.choice(['00', '30'])}", f"{R.randrange(7, 11)}:30 am"])


PRODUCTS = {
    "es": ["crema de caléndula", "aceite de coco", "jabón de avena", "shampoo sólido",
           "kit de regalo", "desodorante natural", "protector solar", "serum de vitamina C",
           "exfoliante de café", "bálsamo labial", "mascarilla de arcilla", "aceite de rosa mosqueta"],
    "pt": ["creme de calêndula", "óleo de coco", "sabonete de aveia", "shampoo sólido",
           "kit presente", "desodorante natural", "protetor solar", "sérum de vitamina C",
           "esfoliante de café", "hidratante labial", "máscara de argila"],
    "en": ["calendula cream", "coconut oil", "oatmeal soap", "solid shampoo", "gift kit",
           "natural deodorant", "sunscreen", "vitamin C serum", "coffee scrub", "lip balm",
           "clay mask"],
}


def product_url():
    slug = R.choice(["crema-calendula", "aceite-coco", "jabon-avena", "kit-regalo", "serum-vit-c",
                     "oleo-de-coco", "shampoo-solido"])
    return R.choice([f"https://tienda.kaiu.co/p/{slug}-{R.randrange(10, 999)}",
                     f"https://www.lojanatural.com.br/produto/{slug}?utm_source=whatsapp&utm_medium=chat",
                     f"https://shop.example.com/products/{slug}?variant={digits(11)}",
                     f"www.tienda.com/p/{slug}-{R.randrange(100, 999)}",
                     f"https://tienda.kaiu.co/collections/all?page={R.randrange(2, 9)}&sort=price",
                     f"https://kaiu.co/{digits(10)}"])


def invoice():
    return R.choice([f"FV-{R.choice([2023, 2024])}-{R.randrange(1, 99999):06d}", f"No. {R.randrange(100, 99999):06d}",
                     f"INV-{R.randrange(100, 99999):05d}", f"FE{R.randrange(1000, 99999)}",
                     f"{R.randrange(1, 9999):04d}-{R.randrange(1, 99999999):08d}"])


# Clean (trap) clauses: (lang, template). Slots are filled with trap values, never labelled.
TRAP_CLAUSES = {
    "es": [
        "mi pedido {ORDER} no ha llegado", "¿me confirman el estado de la orden {ORDER}?",
        "el número de pedido es {ORDER}", "hice el pedido {ORDER} hace una semana",
        "la guía de Servientrega es {GUIA}", "número de guía {GUIA}", "el rastreo dice {TRACK}",
        "me salió en {PRICE} y en la página decía {PRICE}", "¿el envío cuesta {PRICE}?",
        "lo pagué a {PRICE}", "vi que el kit está en {PRICE} con el {PCT} de descuento",
        "me llegó el {DATE} pero estaba roto", "¿me lo pueden entregar el {DATE}?",
        "la entrega dice {DATE} entre las {TIME} y las {TIME}", "estoy disponible a partir de las {TIME}",
        "olvidé mi contraseña, ¿me ayudan?", "la contraseña no funciona", "es clave que llegue hoy",
        "el {SKU} no aparece en la tienda", "el código de barras es {EAN}", "EAN {EAN}",
        "¿tienen este producto? {URL}", "vi esto en la página {URL}", "la factura {INVOICE} tiene un error",
        "necesito la factura electrónica del pedido {ORDER}", "quiero {QTY} unidades de {PRODUCT}",
        "¿el {PRODUCT} de {QTY} ml viene en presentación de {QTY}?", "tengo un cupón del {PCT}",
        "el código de la tarjeta de regalo es {BADCARD}", "me dieron este número de referencia {BADCARD}",
        "la calle de mi casa está en obras", "estoy en la calle, les escribo más tarde",
        "la tienda de la Av. Chile estaba cerrada", "fui a la sede del CC Andino y no lo tenían",
        "la app versión {VERSION} no me deja pagar", "¿cuánto se demora a Medellín? ya van {QTY} días",
        "pagué con PSE y me salió la transacción {ORDER}", "el radicado de la PQR es {ORDER}",
        "el producto {EAN} no tiene precio", "me cobraron {PRICE} de más", "son {QTY} cajas de {QTY}",
        "entre el {DATE} y el {DATE}", "la promo 2x1 termina el {DATE}", "mi caso es el {ORDER}",
        "pedido {ORDER}, factura {INVOICE}", "tomé la Avenida 68 y no encontré la tienda",
        "el paquete de DHL {GUIA} sigue en bodega", "compré {QTY} de {PRODUCT} por {PRICE}",
        "¿el {PRODUCT} sirve para piel grasa?", "mi mamá cumple años el {SHORTDATE}, ¿llega antes?",
        "el de {QTY} g cuesta {PRICE}", "la referencia {SKU} está agotada",
    ],
    "pt": [
        "meu pedido {ORDER} ainda não chegou", "o número do pedido é {ORDER}",
        "o código de rastreio é {TRACK}", "rastreio {TRACK}", "paguei {PRICE} no pix",
        "o frete ficou {PRICE}?", "no site está {PRICE} mas cobraram {PRICE}",
        "chegou dia {DATE} mas veio errado", "podem entregar dia {DATE}?", "estou em casa a partir das {TIME}",
        "o {SKU} está esgotado?", "código de barras {EAN}", "vi esse produto aqui {URL}",
        "a nota fiscal {INVOICE} veio errada", "quero {QTY} unidades do {PRODUCT}",
        "tenho um cupom de {PCT}", "o código do vale-presente é {BADCARD}",
        "a rua está em obras", "fui na loja da Av. Paulista e estava fechada",
        "o protocolo do atendimento é {ORDER}", "o {PRODUCT} serve pra pele oleosa?",
        "comprei {QTY} {PRODUCT} por {PRICE}", "a entrega estava prevista para {DATE}",
        "o app na versão {VERSION} não abre", "já faz {QTY} dias", "o produto {EAN} está sem preço",
        "pedido {ORDER}, nota {INVOICE}", "o desconto de {PCT} não foi aplicado",
        "a encomenda {TRACK} está parada", "o aniversário da minha mãe é dia {SHORTDATE}, chega antes?",
    ],
    "en": [
        "I forgot my password", "password reset please", "I'll pass on the gift wrap",
        "my order {ORDER} hasn't arrived", "order number {ORDER}", "tracking number {TRACK}",
        "the tracking says {TRACK}", "I paid {PRICE} but the site said {PRICE}", "is shipping {PRICE}?",
        "it arrived on {DATE} but it was damaged", "can you deliver on {DATE}?", "I'm home after {TIME}",
        "is {SKU} back in stock?", "barcode {EAN}", "I saw this on your site {URL}",
        "invoice {INVOICE} has the wrong amount", "I want {QTY} units of {PRODUCT}",
        "I have a {PCT} coupon", "the gift card code is {BADCARD}", "my street is under construction",
        "the store on Main Street was closed", "case number {ORDER}", "does the {PRODUCT} work for oily skin?",
        "I bought {QTY} {PRODUCT} for {PRICE}", "delivery was scheduled for {DATE}", "app version {VERSION} crashes",
        "it's been {QTY} days", "order {ORDER}, invoice {INVOICE}", "the {PCT} discount wasn't applied",
        "the reference number is {BADCARD}", "by the way, 2 questions about the {PRODUCT}",
        "my mom's birthday is on {SHORTDATE}, will it arrive before?",
    ],
}

HARD_TRAPS = {
    "es": ["el número que me dieron en la tienda es {AMBIG}", "la fiesta de cumpleaños es el {FUTURE}, ¿llega antes?",
           "el producto {GEAN} no aparece en la página", "código de barras {GEAN}",
           "mi tarjeta terminada en {LAST4} fue rechazada", "en la calle 93 con 15 hay trancón",
           "NIT {NIT}", "número de cuenta {AMBIG}", "atienden de lunes a viernes de 8:00 a 17:00?",
           "la Avenida 68 con Calle 13 está cerrada", "me llegó un SMS del {SHORT} con un código {SHORT}",
           "tengo 1.023.456 puntos acumulados", "¿el envío a la Cra 7 cuesta {PRICE}?"],
    "pt": ["a festa de aniversário é dia {FUTURE}", "o produto {GEAN} não aparece", "EAN {GEAN}",
           "meu cartão final {LAST4} foi recusado", "na Av. Paulista tem 2 lojas de vocês?",
           "CNPJ da transportadora? o protocolo é {AMBIG}", "recebi um SMS do {SHORT}"],
    "en": ["the birthday party is on {FUTURE}, will it arrive before?", "barcode {GEAN}",
           "my card ending in {LAST4} was declined", "I live on Main St, near the park",
           "the store is open 9:00-17:00", "the number they gave me is {AMBIG}", "I got a text from {SHORT}"],
}

QTYS = ["2", "3", "1", "10", "500", "250", "100", "12", "6", "x2", "4", "5", "1,5", "30", "50"]


def trap_value(slot, lang, country):
    if slot == "ORDER":
        return order_no()
    if slot == "GUIA":
        return R.choice([str(R.randrange(2000000000, 9999999999)), digits(12), digits(11)])
    if slot == "TRACK":
        return tracking()
    if slot == "PRICE":
        return price(country)
    if slot == "PCT":
        return R.choice([f"{R.randrange(5, 70)}%", f"{R.randrange(5, 50)} %"])
    if slot == "DATE":
        return plain_date(lang)
    if slot == "SHORTDATE":
        return R.choice([f"{R.randrange(1, 29)}/{R.randrange(1, 13):02d}", f"{R.randrange(1, 29)} de {MONTHS['es'][R.randrange(12)]}"
                         if lang == "es" else f"{R.randrange(1, 29)}/{R.randrange(1, 13)}"])
    if slot == "TIME":
        return time_str()
    if slot == "SKU":
        return sku()
    if slot == "EAN":
        return ean()
    if slot == "URL":
        return product_url()
    if slot == "INVOICE":
        return invoice()
    if slot == "QTY":
        return R.choice(QTYS)
    if slot == "PRODUCT":
        return R.choice(PRODUCTS[lang])
    if slot == "BADCARD":
        return bad_card()
    if slot == "AMBIG":
        return R.choice("23456789") + digits(9)
    if slot == "FUTURE":
        return f"{R.randrange(1, 29):02d}/{R.randrange(1, 13):02d}/{R.choice([2024, 2025])}"
    if slot == "GEAN":
        return ean13(R.choice(["400", "401", "402", "405", "406", "409", "410", "425"]))
    if slot == "LAST4":
        return digits(4)
    if slot == "NIT":
        return f"{R.randrange(800, 999)}.{digits(3)}.{digits(3)}-{R.randrange(0, 10)}"
    if slot == "SHORT":
        return str(R.randrange(10000, 99999))
    if slot == "VERSION":
        return R.choice([f"{R.randrange(1, 6)}.{R.randrange(0, 20)}.{R.randrange(0, 20)}",
                         f"{R.randrange(1, 6)}.{R.randrange(0, 9)}.{R.randrange(0, 9)}.{R.randrange(0, 200)}"])
    raise KeyError(slot)


# --------------------------------------------------------------------------- PII clauses

PII_CLAUSES = {
    ("es", "PHONE"): [
        "mi celular es {PHONE}", "me pueden llamar al {PHONE}", "mi número es {PHONE}",
        "escríbanme al WhatsApp {PHONE}", "cel: {PHONE}", "llámenme al {PHONE} por favor",
        "este es mi número {PHONE}", "el teléfono de mi esposo es {PHONE}", "{PHONE}",
        "contacto {PHONE}", "quien recibe es mi hermana, su cel {PHONE}", "Tel. {PHONE}",
        "pueden comunicarse al {PHONE} después de las 5", "el número de contacto es {PHONE}",
        "me cambié de número, ahora es {PHONE}", "mi whatsapp {PHONE}", "llamar al {PHONE} antes de entregar",
        "móvil {PHONE}", "fijo {PHONE}", "el domiciliario me puede llamar al {PHONE}",
        "cel:{PHONE}", "Tel.{PHONE}", "WhatsApp: {PHONE}", "el pedido lo recibe mi hermana, {PHONE}",
        "mi número de pedido es {ORDER} y mi teléfono {PHONE}", "{PHONE} 🙏", "al {PHONE}.",
        "me pueden escribir al {PHONE} o al {PHONE}",
    ],
    ("pt", "PHONE"): [
        "meu celular é {PHONE}", "pode me ligar no {PHONE}", "meu zap é {PHONE}", "whatsapp {PHONE}",
        "telefone: {PHONE}", "meu número é {PHONE}", "liga pra mim no {PHONE}",
        "o contato da minha mãe é {PHONE}", "{PHONE}", "fone {PHONE}", "me chama no {PHONE}",
        "o telemóvel é {PHONE}", "contato: {PHONE}", "pode ligar no {PHONE} antes de entregar",
        "cel:{PHONE}", "o pedido {ORDER} quem recebe é meu irmão, {PHONE}", "zap {PHONE} 😊",
    ],
    ("en", "PHONE"): [
        "my cell is {PHONE}", "call me at {PHONE}", "you can reach me at {PHONE}", "my number is {PHONE}",
        "text me at {PHONE}", "phone: {PHONE}", "{PHONE}", "my husband's phone is {PHONE}",
        "please call {PHONE} after 5pm", "the driver can call {PHONE}", "mobile {PHONE}",
        "order {ORDER}, my phone is {PHONE}", "cell:{PHONE}",
    ],
    ("es", "EMAIL"): [
        "mi correo es {EMAIL}", "envíenme la factura a {EMAIL}", "correo: {EMAIL}", "{EMAIL}",
        "me registré con {EMAIL}", "mi email {EMAIL}", "el correo de la cuenta es {EMAIL}",
        "mándenlo a {EMAIL} por favor", "la factura a nombre de la empresa, correo {EMAIL}",
        "<{EMAIL}>", "mailto:{EMAIL}", "correo:{EMAIL}",
    ],
    ("pt", "EMAIL"): [
        "meu e-mail é {EMAIL}", "manda pro {EMAIL}", "email: {EMAIL}", "{EMAIL}",
        "cadastrei com o {EMAIL}", "o e-mail da conta é {EMAIL}", "envia a nota pro {EMAIL}",
    ],
    ("en", "EMAIL"): [
        "my email is {EMAIL}", "send it to {EMAIL}", "email: {EMAIL}", "{EMAIL}",
        "I signed up with {EMAIL}", "the account email is {EMAIL}", "please cc {EMAIL}",
        "Email: <{EMAIL}>",
    ],
    ("es", "CARD"): [
        "pagué con la tarjeta {CARD}", "mi tarjeta es {CARD}", "el número de la tarjeta {CARD} vence 08/27",
        "me cobraron dos veces en la tarjeta {CARD}", "¿pueden cobrar a la {CARD}?",
        "tarjeta {CARD} cvv {CVV}", "la débito terminada en... bueno es {CARD}", "{CARD}",
        "intenté con {CARD} y no pasó",
    ],
    ("pt", "CARD"): [
        "meu cartão {CARD}", "paguei no cartão {CARD}", "o cartão é {CARD} validade 09/28",
        "cobraram duas vezes no cartão {CARD}", "{CARD}", "tentei com o {CARD} e recusou",
    ],
    ("en", "CARD"): [
        "my card number is {CARD}", "charge it to {CARD} exp 09/26", "card: {CARD}", "{CARD}",
        "I was charged twice on {CARD}", "tried {CARD} and it was declined",
    ],
    ("es", "IBAN"): [
        "mi IBAN es {IBAN}", "hagan la devolución a la cuenta {IBAN}", "IBAN: {IBAN}",
        "transferid a {IBAN}", "el reembolso a {IBAN} por favor", "{IBAN}",
    ],
    ("pt", "IBAN"): [
        "o meu IBAN é {IBAN}", "IBAN {IBAN}", "façam o reembolso para {IBAN}", "{IBAN}",
    ],
    ("en", "IBAN"): [
        "my IBAN is {IBAN}", "refund to IBAN {IBAN}", "IBAN: {IBAN}", "{IBAN}",
    ],
    ("es", "CEDULA"): [
        "mi cédula es {CEDULA}", "C.C. {CEDULA}", "CC {CEDULA}", "número de documento {CEDULA}",
        "identificación: {CEDULA}", "la factura a nombre de mi papá, cédula {CEDULA}",
        "con documento {CEDULA}", "cc: {CEDULA}", "cédula de ciudadanía {CEDULA}",
        "mi número de cédula es el {CEDULA}", "CC. {CEDULA}", "C.C {CEDULA}",
        "documento {CEDULA} de Bogotá",
    ],
    ("pt", "CPF"): [
        "meu CPF é {CPF}", "CPF: {CPF}", "CPF {CPF}", "nota no CPF {CPF}", "cpf {CPF}",
        "o CPF da minha esposa é {CPF}",
    ],
    ("pt", "CNPJ"): ["CNPJ da empresa {CNPJ}", "a nota sai no CNPJ {CNPJ}", "CNPJ: {CNPJ}"],
    ("es", "DNI"): ["mi DNI es {DNI}", "DNI: {DNI}", "DNI {DNI}", "factura a nombre de {DNI}", "con DNI {DNI}"],
    ("es", "NIE"): ["NIE {NIE}", "mi NIE es {NIE}", "con NIE {NIE}", "NIE: {NIE}"],
    ("en", "SSN"): ["my SSN is {SSN}", "SSN: {SSN}", "social security number {SSN}", "ssn {SSN}"],
    ("es", "IP"): [
        "mi IP es {IP}", "la IP del router es {IP}", "me bloquearon la IP {IP}", "accedí desde {IP}",
        "me sale error desde la IP {IP}",
    ],
    ("pt", "IP"): ["meu IP é {IP}", "IP {IP}", "acessei do IP {IP}", "bloquearam o IP {IP}"],
    ("en", "IP"): ["my IP address is {IP}", "login from {IP} wasn't me", "IP: {IP}", "blocked IP {IP}"],
    ("es", "URLC"): [
        "entra con este link {URLC}", "el link para restablecer es {URLC}", "me llegó esto: {URLC}",
        "¿este enlace es de ustedes? {URLC}",
    ],
    ("pt", "URLC"): ["o link é {URLC}", "recebi isso {URLC}", "esse link é de vocês? {URLC}"],
    ("en", "URLC"): ["here's the link {URLC}", "I got this link {URLC}, is it legit?", "link: {URLC}"],
    ("es", "DOB"): [
        "nací el {DOB}", "fecha de nacimiento {DOB}, por si la piden", "mi fecha de nacimiento es {DOB}", "fecha de nacimiento: {DOB}",
        "mi cumpleaños es el {DOB}", "nací en Cali el {DOB}", "F. nacimiento {DOB}",
    ],
    ("pt", "DOB"): [
        "data de nascimento: {DOB}", "nasci em {DOB}", "nasci no dia {DOB}", "minha data de nascimento é {DOB}",
        "nascimento {DOB}",
    ],
    ("en", "DOB"): [
        "I was born on {DOB}", "DOB: {DOB}", "date of birth {DOB}", "my date of birth is {DOB}",
        "born {DOB}", "birthday: {DOB}",
    ],
    ("es", "SECRET"): [
        "mi contraseña es {PWD}", "contraseña: {PWD}", "la clave de mi cuenta es {PWD}",
        "usuario {NAMEUSER} clave {PWD}", "el pin de la tarjeta es {CODE}", "cvv {CODE}",
        "me llegó el código de verificación {CODE}", "código de seguridad: {CODE}",
    ],
    ("pt", "SECRET"): [
        "minha senha é {PWD}", "senha: {PWD}", "o pin é {CODE}", "código de verificação {CODE}",
        "cvv {CODE}",
    ],
    ("en", "SECRET"): [
        "my password is {PWD}", "password: {PWD}", "user {NAMEUSER} pass {PWD}", "PIN {CODE}",
        "the verification code is {CODE}", "security code {CODE}", "cvv {CODE}",
    ],
    ("es", "ADDR"): [
        "mi dirección es {ADDR}, {CITY}", "envíenlo a la {ADDR}", "vivo en la {ADDR} barrio {HOOD}",
        "dirección: {ADDR}", "entregar en {ADDR}, {CITY}", "{ADDR}", "la dirección de entrega es {ADDR}",
        "me mudé, ahora estoy en {ADDR}",
    ],
    ("pt", "ADDR"): [
        "meu endereço é {ADDR}, {CITY}", "entregar na {ADDR} - {HOOD}", "moro na {ADDR}",
        "endereço: {ADDR}", "{ADDR}", "a morada é {ADDR}, {CITY}", "pode mandar pra {ADDR}",
    ],
    ("en", "ADDR"): [
        "my address is {ADDR}, {CITY}", "ship to {ADDR}", "I live at {ADDR}", "address: {ADDR}",
        "{ADDR}", "please deliver to {ADDR}, {CITY}", "I moved to {ADDR}",
    ],
}

CITIES = {"CO": ["Bogotá", "Medellín", "Cali", "Barranquilla", "Bucaramanga"],
          "MX": ["CDMX", "Guadalajara", "Monterrey", "Puebla"],
          "ES": ["Madrid", "28013 Madrid", "Barcelona", "08001 Barcelona", "Valencia", "Sevilla"],
          "BR": ["São Paulo", "Rio de Janeiro", "Belo Horizonte - MG", "Curitiba", "São Paulo/SP"],
          "PT": ["Lisboa", "1100-148 Lisboa", "Porto", "4050-262 Porto"],
          "US": ["Austin, TX 78701", "Miami, FL 33130", "Chicago, IL", "New York, NY 10001", "Houston"]}
HOODS = {"CO": ["Chapinero", "El Poblado", "Cedritos", "Laureles", "Usaquén"],
         "MX": ["Roma Norte", "Condesa", "Polanco"], "ES": ["Centro"], "BR": ["Centro", "Pinheiros", "Savassi", "Copacabana"],
         "PT": ["Baixa"], "US": ["Downtown"]}

FORMS = {
    "CO": ["Datos para el envío:\nNombre: {NAME}\nCédula: {CEDULA}\nCel: {PHONE}\nDirección: {ADDR}\nCiudad: {CITY}",
           "{NAME}, CC {CEDULA}, {ADDR}, {CITY}, cel {PHONE}",
           "Nombre: {NAME} / Tel: {PHONE} / Correo: {EMAIL}"],
    "MX": ["Datos: {NAME}, {ADDR}, {CITY}. Tel {PHONE}, correo {EMAIL}"],
    "ES": ["Nombre: {NAME}\nDNI: {DNI}\nDirección: {ADDR}, {CITY}\nMóvil: {PHONE}",
           "Envío a {NAME}, {ADDR}, {CITY}. Teléfono {PHONE}"],
    "BR": ["Dados para entrega:\nNome: {NAME}\nCPF: {CPF}\nEndereço: {ADDR}\nCidade: {CITY}\nCelular: {PHONE}",
           "{NAME}, CPF {CPF}, {ADDR} - {CITY}, fone {PHONE}"],
    "PT": ["Nome: {NAME}\nMorada: {ADDR}, {CITY}\nTelemóvel: {PHONE}\nEmail: {EMAIL}"],
    "US": ["Name: {NAME}\nAddress: {ADDR}, {CITY}\nPhone: {PHONE}\nEmail: {EMAIL}",
           "{NAME}, {ADDR}, {CITY}, {PHONE}"],
}

SLOT_TYPE = {"PHONE": "PHONE", "EMAIL": "EMAIL", "CARD": "CARD", "IBAN": "IBAN", "CEDULA": "NATIONAL_ID",
             "CPF": "NATIONAL_ID", "CNPJ": "NATIONAL_ID", "DNI": "NATIONAL_ID", "NIE": "NATIONAL_ID",
             "SSN": "NATIONAL_ID", "IP": "IP", "URLC": "URL_CREDENTIALS", "DOB": "DOB", "ADDR": "ADDRESS",
             "PWD": "SECRET", "CODE": "SECRET"}


def pii_value(slot, lang, country, tmpl):
    if slot == "PHONE":
        # A bare number needs to look like a phone on its own; an announced one may be short.
        return phone(country, announced="{PHONE}" != tmpl)
    if slot == "EMAIL":
        return email(lang, country)
    if slot == "CARD":
        return card()
    if slot == "IBAN":
        return iban_value(country)
    if slot == "CEDULA":
        return cedula()
    if slot == "CPF":
        return cpf_value()
    if slot == "CNPJ":
        return cnpj_value()
    if slot == "DNI":
        return dni_value()
    if slot == "NIE":
        return nie_value()
    if slot == "SSN":
        # Undashed only where the template names it.
        return ssn_value(dashed=R.random() < 0.75)
    if slot == "IP":
        return ip_value()
    if slot == "URLC":
        return url_cred()
    if slot == "DOB":
        return dob_value(lang)
    if slot == "ADDR":
        return address(country)
    if slot == "PWD":
        word = R.choice(["Sol", "perro", "Luna", "hunter", "Casa", "gatito", "Maria", "tigre"])
        return R.choice([f"{word}{R.randrange(1, 9999)}", f"{word.capitalize()}{R.randrange(10, 99)}!",
                         f"{word}_{R.randrange(100, 999)}", f"{word.upper()}{R.randrange(1, 99)}"])
    if slot == "CODE":
        return str(R.randrange(100, 99999999))[: R.choice([3, 4, 6, 6, 8])]
    raise KeyError(slot)


# Which PII kinds each country's customers send, with weights.
KINDS = {
    "CO": [("PHONE", 8), ("EMAIL", 6), ("CARD", 3), ("CEDULA", 5), ("ADDR", 7), ("IP", 1), ("URLC", 1), ("DOB", 2), ("IBAN", 0.5), ("SECRET", 1)],
    "MX": [("PHONE", 8), ("EMAIL", 6), ("CARD", 3), ("ADDR", 4), ("IP", 1), ("URLC", 1), ("DOB", 2), ("SECRET", 1)],
    "ES": [("PHONE", 6), ("EMAIL", 5), ("CARD", 3), ("DNI", 3), ("NIE", 1.5), ("ADDR", 5), ("IBAN", 4), ("IP", 1), ("URLC", 1), ("DOB", 2), ("SECRET", 1)],
    "BR": [("PHONE", 8), ("EMAIL", 6), ("CARD", 3), ("CPF", 5), ("CNPJ", 1.5), ("ADDR", 6), ("IP", 1), ("URLC", 1), ("DOB", 2), ("IBAN", 0.5), ("SECRET", 1)],
    "PT": [("PHONE", 6), ("EMAIL", 5), ("CARD", 2), ("ADDR", 4), ("IBAN", 4), ("IP", 1), ("URLC", 1), ("DOB", 2), ("SECRET", 1)],
    "US": [("PHONE", 8), ("EMAIL", 6), ("CARD", 4), ("SSN", 3), ("ADDR", 6), ("IBAN", 1), ("IP", 2), ("URLC", 2), ("DOB", 3), ("SECRET", 1)],
}
LANG = {"CO": "es", "MX": "es", "ES": "es", "BR": "pt", "PT": "pt", "US": "en"}
COUNTRY_WEIGHTS = [("CO", 30), ("MX", 10), ("ES", 10), ("BR", 25), ("PT", 8), ("US", 17)]

GREET = {
    "es": ["Hola", "Hola!", "Buenas tardes", "Buenos días", "Buen día", "Hola buenas", "", "", "Hola 👋",
           "Buenas noches", "Qué tal", "Holaa", "Buenas"],
    "pt": ["Oi", "Olá", "Bom dia", "Boa tarde", "Boa noite", "Oi, tudo bem?", "", "", "Oii", "Olá 😊"],
    "en": ["Hi", "Hello", "Hey", "Good morning", "Hi there", "", "", "Hey!"],
}
CLOSE = {
    "es": ["Gracias", "Muchas gracias!", "Quedo atenta", "Quedo atento", "Saludos", "🙏", "Gracias 😊", "", "", "",
           "Mil gracias", "Gracias!!", "Feliz día"],
    "pt": ["Obrigado", "Obrigada!", "Valeu", "Aguardo retorno", "", "", "Obg", "Agradeço 🙏"],
    "en": ["Thanks", "Thank you!", "Thx", "Cheers", "", "", "Appreciate it"],
}
FILLER = {
    "es": ["tengo una pregunta", "necesito ayuda con una compra", "les escribo por lo siguiente",
           "es urgente por favor", "ya les había escrito ayer", "no me han respondido",
           "quiero hacer un cambio", "quisiera saber si tienen envío gratis"],
    "pt": ["tenho uma dúvida", "preciso de ajuda com uma compra", "é urgente por favor",
           "já mandei mensagem ontem", "quero fazer uma troca", "vocês entregam no sábado?"],
    "en": ["quick question", "I need help with an order", "this is urgent please",
           "I messaged yesterday too", "I'd like to return something", "do you ship on weekends?"],
}

SLOT_RE = re.compile(r"\{([A-Z]+)\}")


class Msg:
    def __init__(self):
        self.buf = []
        self.n = 0
        self.spans = []
        self.traps = []

    def add(self, s, kind=None, trap=None):
        b = len(s.encode("utf-8"))
        if kind:
            self.spans.append({"start": self.n, "end": self.n + b, "type": kind})
        if trap:
            self.traps.append(trap)
        self.buf.append(s)
        self.n += b

    def text(self):
        return "".join(self.buf)


def person_name(lang):
    return f"{R.choice(FIRST[lang]).title()} {R.choice(LAST[lang]).title()}"


def close(msg, lang):
    """Ends the message with a closing line, or not."""
    c = R.choice(CLOSE[lang])
    if c:
        msg.add(joiner(msg.text()).replace(", ", ". ") + c)


def render(msg, tmpl, lang, country, pii_ok=True):
    pos = 0
    for m in SLOT_RE.finditer(tmpl):
        msg.add(tmpl[pos:m.start()])
        slot = m.group(1)
        if slot in SLOT_TYPE and pii_ok:
            msg.add(pii_value(slot, lang, country, tmpl), kind=SLOT_TYPE[slot])
        elif slot == "CITY":
            msg.add(R.choice(CITIES[country]))
        elif slot == "HOOD":
            msg.add(R.choice(HOODS[country]))
        elif slot == "NAME":
            msg.add(person_name(lang))
        elif slot == "CVV":
            msg.add(digits(3), kind="SECRET")
        elif slot == "NAMEUSER":
            msg.add(R.choice(["admin", "ana.gomez", "jperez", "cliente01", "maria_r"]))
        else:
            msg.add(trap_value(slot, lang, country), trap=slot)
        pos = m.end()
    msg.add(tmpl[pos:])


def joiner(prev):
    if prev.rstrip().endswith(("?", ".", "!", ":")):
        return R.choice([" ", "\n", " "])
    return R.choice([", ", ". ", "\n", " ", ". ", ", "])


def message(has_pii):
    country = R.choices([c for c, _ in COUNTRY_WEIGHTS], [w for _, w in COUNTRY_WEIGHTS])[0]
    lang = LANG[country]
    msg = Msg()
    g = R.choice(GREET[lang])
    parts = []
    if has_pii:
        kinds = KINDS[country]
        k = R.choices([x for x, _ in kinds], [w for _, w in kinds])[0]
        parts.append(("form", None) if R.random() < 0.06 else ("pii", k))
        if R.random() < 0.22:
            k2 = R.choices([x for x, _ in kinds], [w for _, w in kinds])[0]
            if k2 != k:
                parts.append(("pii", k2))
        if R.random() < 0.45:
            parts.append(("trap", None))
        R.shuffle(parts)
    else:
        parts = [("trap", None) for _ in range(R.choice([1, 1, 2, 2, 3]))]
    if R.random() < 0.25:
        parts.insert(0, ("filler", None))
    if g:
        msg.add(g + R.choice([", ", "! ", ". ", "\n", " "]))
    for i, (kind, k) in enumerate(parts):
        if i:
            msg.add(joiner(msg.text()))
        if kind == "pii":
            key = (lang, k)
            tmpl = R.choice(PII_CLAUSES[key])
            if k == "SSN" and "{SSN}" in tmpl and not any(w in tmpl.lower() for w in ("ssn", "social")):
                tmpl = "SSN {SSN}"
            render(msg, tmpl, lang, country)
        elif kind == "trap":
            pool = HARD_TRAPS[lang] if R.random() < 0.05 else TRAP_CLAUSES[lang]
            render(msg, R.choice(pool), lang, country)
        elif kind == "form":
            render(msg, R.choice(FORMS[country]), lang, country)
        else:
            msg.add(R.choice(FILLER[lang]))
    close(msg, lang)
    text = msg.text()
    if R.random() < 0.05 and not has_pii:
        text = text.lower()
    return {"text": text, "spans": msg.spans, "lang": lang, "country": country, "traps": msg.traps}


def main():
    out = []
    for _ in range(N_PII):
        out.append(message(True))
    for _ in range(N_CLEAN):
        out.append(message(False))
    for _ in range(N_MX_PII):
        out.append(mx_message(True))
    for _ in range(N_MX_CLEAN):
        out.append(mx_message(False))
    for i in range(N_PASSPORT):
        out.append(passport_message("pt" if i % 2 else "en", i % 3 != 0))
    for i in range(N_ACCOUNT):
        out.append(account_message(i % 4 != 0))
    R.shuffle(out)
    for m in out:
        b = m["text"].encode("utf-8")
        for s in m["spans"]:
            assert b[s["start"]:s["end"]].decode("utf-8"), m
        sys.stdout.write(json.dumps(m, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- Mexico

N_MX_PII = 180
N_MX_CLEAN = 70
N_PASSPORT = 40

CURP_ALPHABET = "0123456789ABCDEFGHIJKLMNÑOPQRSTUVWXYZ"
RFC_ALPHABET = "0123456789ABCDEFGHIJKLMN&OPQRSTUVWXYZ Ñ"
CURP_STATES = ["AS", "BC", "BS", "CC", "CL", "CM", "CS", "CH", "DF", "DG", "GT", "GR", "HG", "JC", "MC",
               "MN", "MS", "NT", "NL", "OC", "PL", "QT", "QR", "SP", "SL", "SR", "TC", "TS", "TL", "VZ",
               "YN", "ZS", "NE"]
CONSONANTS = "BCDFGHJKLMNPQRSTVWXYZ"
# Banks most people hold accounts at (a bare CLABE is recognised from these) and some others.
COMMON_BANKS = ["002", "012", "014", "021", "030", "036", "044", "058", "062", "072", "127", "130",
                "137", "638", "646", "722"]
OTHER_BANKS = ["006", "019", "042", "059", "060", "106", "113", "132", "133", "136", "143", "145"]


def yymmdd():
    return f"{R.randrange(40, 100) if R.random() < 0.8 else R.randrange(0, 6):02d}" \
           f"{R.randrange(1, 13):02d}{R.randrange(1, 29):02d}"


def curp_value():
    body = (R.choice("BCDFGHJKLMNPRSTVZ") + R.choice("AEIOUX") + R.choice("ABCDEGHLMNOPRSTVZ")
            + R.choice("ABCDEGHIJLMNPRSV") + yymmdd() + R.choice("HM") + R.choice(CURP_STATES)
            + "".join(R.choice(CONSONANTS) for _ in range(3)) + R.choice("0123456789ABC"))
    t = sum(CURP_ALPHABET.index(c) * (18 - i) for i, c in enumerate(body))
    curp = body + str((10 - t % 10) % 10)
    return curp.lower() if R.random() < 0.1 else curp


def rfc_check(first12):
    t = sum(RFC_ALPHABET.index(c) * (13 - i) for i, c in enumerate(first12))
    c = (11 - t % 11) % 11
    return "A" if c == 10 else str(c)


def rfc_value(letters=4):
    head = "".join(R.choice("ABCDEFGHILMNOPRSTVZ") for _ in range(letters)) + yymmdd()
    homo = R.choice("ABCDEFGHJKLMNPRSTUVWXYZ123456789") + R.choice("ABCDEFGHJKLMNPRSTUVWXYZ123456789")
    first = head + homo
    rfc = first + rfc_check(("   " + first)[-12:])
    if letters == 4 and R.random() < 0.12:
        rfc = f"{rfc[:4]}-{rfc[4:10]}-{rfc[10:]}"
    return rfc


def clabe_digits(banks):
    body = R.choice(banks) + digits(14)
    w = [3, 7, 1]
    t = sum((int(c) * w[i % 3]) % 10 for i, c in enumerate(body))
    return body + str((10 - t % 10) % 10)


def clabe_value(tmpl):
    named = any(w in SLOT_RE.sub("", tmpl).lower() for w in ("clabe", "spei"))
    d = clabe_digits(COMMON_BANKS + OTHER_BANKS if named else COMMON_BANKS)
    if named and R.random() < 0.25:
        return " ".join(d[i:i + 4] for i in range(0, 18, 4))
    if named and R.random() < 0.1:
        return f"{d[:3]}-{d[3:6]}-{d[6:17]}-{d[17]}"
    return d


def ine_value():
    key = ("".join(R.choice("ABCDEFGHIJLMNOPRSTUVZ") for _ in range(6)) + yymmdd()
           + f"{R.randrange(1, 33):02d}" + R.choice("HM") + digits(3))
    return key.lower() if R.random() < 0.1 else key


def passport_value():
    return R.choice([R.choice("GN") + digits(8), R.choice(["AB", "AQ", "PE"]) + digits(7),
                     R.choice(["FZ", "GA", "YB"]) + digits(6), R.choice(["PAA", "PAB", "XDA"]) + digits(6),
                     R.choice("123456789") + digits(8), R.choice("CP") + digits(6)])


MX_SLOTS = {"CURP": "NATIONAL_ID", "RFC": "NATIONAL_ID", "CLABE": "BANK_ACCOUNT", "INE": "NATIONAL_ID",
            "PASSPORT": "NATIONAL_ID"}
MX_VALUES = {"CURP": curp_value, "RFC": rfc_value, "INE": ine_value, "PASSPORT": passport_value}
MX_CLAUSES = {
    "CURP": ["mi CURP es {CURP}", "CURP: {CURP}", "{CURP}", "te paso mi curp {CURP}",
             "para el registro mi CURP {CURP}", "la CURP de mi mamá es {CURP}", "curp {CURP} gracias"],
    "RFC": ["mi RFC es {RFC}", "RFC: {RFC}", "necesito factura a nombre de {NAME}, RFC {RFC}",
            "me facturan a {RFC} por favor", "{RFC}", "factura con RFC {RFC} y uso CFDI G03",
            "mis datos fiscales: {RFC}"],
    "CLABE": ["mi CLABE es {CLABE}", "CLABE interbancaria: {CLABE}",
              "deposítenme el reembolso a la cuenta CLABE {CLABE}", "por SPEI a la {CLABE}",
              "{CLABE}", "la clabe {CLABE} está a nombre de {NAME}", "transfiéranme a {CLABE} por favor",
              "el reembolso a esta cuenta: {CLABE}"],
    "INE": ["mi clave de elector es {INE}", "INE: {INE}", "la clave de mi credencial es {INE}", "{INE}",
            "clave de elector {INE} sección 1234"],
    "PASSPORT": ["mi pasaporte es {PASSPORT}", "pasaporte número {PASSPORT}", "viajo con pasaporte {PASSPORT}",
                 "pasaporte mexicano: {PASSPORT}", "el número de pasaporte es {PASSPORT}"],
}
PASSPORT_CLAUSES = {
    "pt": ["meu passaporte é {PASSPORT}", "passaporte nº {PASSPORT}", "número do passaporte: {PASSPORT}"],
    "en": ["my passport number is {PASSPORT}", "passport {PASSPORT}", "Passport #: {PASSPORT}",
           "passport no. {PASSPORT}, expires 2031"],
}
PASSPORT_TRAPS = {
    "pt": ["o passaporte venceu, pedido {ORDER}", "a foto do passaporte custa {PRICE}"],
    "en": ["passport photo costs {PRICE}", "my passport expired, order {ORDER} still pending"],
}
MX_TRAPS = [
    "mi pedido {CLABELIKE} no ha llegado", "el número de guía es {CLABELIKE}",
    "folio {CLABELIKE}", "facturar a la empresa, RFC {RFCMORAL}", "el modelo {SKUMX} no prende",
    "referencia de pago {CLABELIKE}", "el ticket {TICKETMX} de la tienda", "el pedido {ORDER} sigue sin llegar",
    "pagué {PRICE} en OXXO", "llegó el {DATE} pero incompleto",
    "el trámite del pasaporte cuesta {PRICE}", "mi pasaporte venció, el pedido {ORDER} lo recojo con la INE",
]


def mx_trap_value(slot):
    if slot == "CLABELIKE":
        # An 18-digit number with a right CLABE check digit: only its context says what it is.
        return clabe_digits(COMMON_BANKS + OTHER_BANKS + ["900", "100", "800"])
    if slot == "RFCMORAL":
        return rfc_value(letters=3)
    if slot == "SKUMX":
        return R.choice(["LAPT", "TVLG", "REFR", "CELU"]) + f"{R.randrange(13, 99):02d}" \
               f"{R.randrange(13, 99):02d}{R.randrange(32, 99):02d}" + R.choice(["ABC", "X01", "MX2"])
    if slot == "TICKETMX":
        return f"{R.randrange(7000, 9999)} {R.randrange(1000, 9999)} {R.randrange(1000, 9999)} {digits(4)}"
    return trap_value(slot, "es", "MX")


def greeted(lang):
    """A new message, opened with a greeting or not."""
    msg = Msg()
    g = R.choice(GREET[lang])
    if g:
        msg.add(g + R.choice([", ", "! ", ". ", "\n", " "]))
    return msg


def render_pools(msg, pools, fill):
    """Adds a template from each pool, joined; `fill(slot, tmpl)` adds each slot's value."""
    for i, pool in enumerate(pools):
        if i:
            msg.add(joiner(msg.text()))
        tmpl = R.choice(pool)
        pos = 0
        for m in SLOT_RE.finditer(tmpl):
            msg.add(tmpl[pos:m.start()])
            fill(m.group(1), tmpl)
            pos = m.end()
        msg.add(tmpl[pos:])


def mx_message(has_pii):
    msg = greeted("es")
    parts = []
    if has_pii:
        parts.append(MX_CLAUSES[R.choices(["CLABE", "CURP", "RFC", "INE", "PASSPORT"], [5, 4, 4, 3, 2])[0]])
        if R.random() < 0.45:
            parts.append(MX_TRAPS)
        R.shuffle(parts)
    else:
        parts = [MX_TRAPS for _ in range(R.choice([1, 1, 2]))]

    def fill(slot, tmpl):
        if slot in MX_SLOTS:
            value = MX_VALUES.get(slot, lambda: clabe_value(tmpl))()
            msg.add(value, kind=MX_SLOTS[slot])
        elif slot == "NAME":
            msg.add(person_name("es"))
        else:
            msg.add(mx_trap_value(slot), trap=slot)

    render_pools(msg, parts, fill)
    close(msg, "es")
    return {"text": msg.text(), "spans": msg.spans, "lang": "es", "country": "MX", "traps": msg.traps}


def passport_message(lang, has_pii):
    msg = greeted(lang)
    pools = [PASSPORT_CLAUSES[lang]] if has_pii else []
    pools += [PASSPORT_TRAPS[lang]] if not has_pii or R.random() < 0.4 else []
    R.shuffle(pools)

    def fill(slot, _tmpl):
        if slot == "PASSPORT":
            msg.add(passport_value(), kind="NATIONAL_ID")
        else:
            msg.add(trap_value(slot, lang, "US" if lang == "en" else "BR"), trap=slot)

    render_pools(msg, pools, fill)
    country = "US" if lang == "en" else "BR"
    return {"text": msg.text(), "spans": msg.spans, "lang": lang, "country": country, "traps": msg.traps}


# CLABEs after an account phrase or "clave interbancaria" (appended after the messages above, so
# those stay as they were), and 18-digit account numbers that are no CLABE.
N_ACCOUNT = 40
ACCOUNT_CLAUSES = ["mi número de cuenta es {CLABE}", "número de cuenta: {CLABE}",
                   "clave interbancaria {CLABE}", "la cuenta interbancaria es {CLABE} a nombre de {NAME}",
                   "numero de cuenta {CLABE} de {NAME}", "account number {CLABE}"]
ACCOUNT_TRAPS = ["mi número de cuenta con ustedes es {ACCTLIKE}", "número de cuenta {ACCT}",
                 "el número de cuenta {ACCTLIKE} no me deja pagar"]


def account_message(has_pii):
    msg = greeted("es")
    pools = [ACCOUNT_CLAUSES] if has_pii else []
    pools += [ACCOUNT_TRAPS] if not has_pii or R.random() < 0.3 else []
    R.shuffle(pools)

    def fill(slot, _tmpl):
        if slot == "CLABE":
            d = clabe_digits(COMMON_BANKS + OTHER_BANKS)
            if R.random() < 0.25:
                d = " ".join(d[i:i + 4] for i in range(0, 18, 4))
            msg.add(d, kind="BANK_ACCOUNT")
        elif slot == "NAME":
            msg.add(person_name("es"))
        elif slot == "ACCTLIKE":
            # A right CLABE check digit, but no bank has that code.
            msg.add(clabe_digits(["900", "100", "800", "999"]), trap=slot)
        else:
            msg.add(digits(R.choice([8, 10, 12])), trap=slot)

    render_pools(msg, pools, fill)
    close(msg, "es")
    return {"text": msg.text(), "spans": msg.spans, "lang": "es", "country": "MX", "traps": msg.traps}


if __name__ == "__main__":
    main()
