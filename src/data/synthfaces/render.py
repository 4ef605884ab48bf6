"""Drawing faces: every pixel gets a paint, each paint a CelebAMask-HQ class and a colour rule, so
the part masks are exact."""

from __future__ import annotations

import torch

from src.data.synthfaces.parameters import CLASS, HAIR_COLOURS


def _ellipse(u, v, cx, cy, a, b):
    return ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 <= 1.0


# paint ids: what a pixel shows; each maps to a CelebAMask-HQ class and a colour rule
PAINTS = [
    ("background", "background"),
    ("cloth", "cloth"),
    ("neck", "neck"),
    ("hair_long", "hair"),
    ("r_ear", "r_ear"),
    ("l_ear", "l_ear"),
    ("hair_cap", "hair"),
    ("skin", "skin"),
    ("beard", "skin"),
    ("r_eye", "r_eye"),
    ("r_iris", "r_eye"),
    ("r_brow", "r_brow"),
    ("l_eye", "l_eye"),
    ("l_iris", "l_eye"),
    ("l_brow", "l_brow"),
    ("nose", "nose"),
    ("u_lip", "u_lip"),
    ("mouth", "mouth"),
    ("l_lip", "l_lip"),
    ("bangs", "hair"),
    ("eye_g", "eye_g"),
    ("hat", "hat"),
]
PAINT = {name: i for i, (name, _) in enumerate(PAINTS)}
PAINT_CLASS = torch.tensor([CLASS[cls] for _, cls in PAINTS])
SKIN_PAINTS = torch.tensor([PAINT[k] for k in ("neck", "r_ear", "l_ear", "skin", "beard", "nose")])
HAIR_PAINTS = torch.tensor([PAINT[k] for k in ("hair_long", "hair_cap", "bangs", "beard")])


def render(p: dict[str, torch.Tensor], size: int, supersample: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 images [B, 3, S, S], uint8 class maps [B, S, S]) for a batch of parameters.

    Parts are painted at `supersample` x resolution. Colours are averaged down (antialiased
    edges); an output pixel's class is the topmost part painted anywhere in its block (paint ids
    are in back-to-front order, so that is a max-pool), so every mask covers all the pixels its
    part touches, thin eyeglass frames included."""
    ids, u, v = _paint_ids(p, size * supersample)
    images = _colour(p, ids, u, v)
    if supersample > 1:
        images = torch.nn.functional.avg_pool2d(images, supersample)
        ids = torch.nn.functional.max_pool2d(ids.unsqueeze(1).float(), supersample).squeeze(1).long()
    labels = PAINT_CLASS[ids]
    noise = torch.stack(
        [torch.randn(3, size, size, generator=torch.Generator().manual_seed(int(s))) for s in p["noise_seed"]]
    )
    images = (images + 0.02 * noise).clamp(0, 1)
    return (images * 255).round().to(torch.uint8), labels.to(torch.uint8)


def _colour(p: dict[str, torch.Tensor], ids: torch.Tensor, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1]: a per-face palette looked up by paint id, then lighting on skin,
    a texture on hair and a gradient on the background."""
    n = len(ids)
    pale = p["Pale_Skin"].view(n, 1)
    shade = p["skin_shade"].view(n, 1)
    dark, mid, light = (
        torch.tensor([0.45, 0.30, 0.22]),
        torch.tensor([0.80, 0.60, 0.46]),
        torch.tensor([0.97, 0.88, 0.82]),
    )
    skin = pale * light + (1 - pale) * (shade * mid + (1 - shade) * dark)
    hair_table = torch.tensor([HAIR_COLOURS[k] for k in ["Black_Hair", "Brown_Hair", "Blond_Hair", "Gray_Hair", None]])
    hair = hair_table[p["hair_choice"]]

    def const(rgb):
        return torch.tensor(rgb).expand(n, 3)

    colours = {
        "background": p["bg"],
        "cloth": p["cloth"],
        "neck": skin * 0.85,
        "hair_long": hair,
        "r_ear": skin * 0.92,
        "l_ear": skin * 0.92,
        "hair_cap": hair,
        "skin": skin,
        "beard": 0.55 * hair + 0.45 * skin,
        "r_eye": const([0.95, 0.95, 0.95]),
        "r_iris": p["eye_colour"],
        "r_brow": hair * 0.7,
        "l_eye": const([0.95, 0.95, 0.95]),
        "l_iris": p["eye_colour"],
        "l_brow": hair * 0.7,
        "nose": skin * 0.82,
        "u_lip": const([0.70, 0.25, 0.28]),
        "mouth": const([0.20, 0.05, 0.06]),
        "l_lip": const([0.75, 0.30, 0.32]),
        "bangs": hair,
        "eye_g": p["frame_colour"],
        "hat": p["hat_colour"],
    }
    palette = torch.stack([colours[name] for name, _ in PAINTS], dim=1)  # [B, P, 3]
    h, w = ids.shape[1:]
    flat = torch.gather(palette, 1, ids.view(n, h * w, 1).expand(n, h * w, 3))  # [B, HW, 3]
    image = flat.view(n, h, w, 3).permute(0, 3, 1, 2)
    factor = torch.ones(n, h, w)
    u, v = u.expand(1, h, w), v.expand(1, h, w)
    is_skin = torch.isin(ids, SKIN_PAINTS)
    lighting = 1 + p["light"].view(n, 1, 1) * (u - p["cx"].view(n, 1, 1)) / 0.4
    factor = torch.where(is_skin, lighting, factor)
    texture = 1 + 0.08 * torch.sin(40 * (u + 0.3 * v))
    factor = torch.where(torch.isin(ids, HAIR_PAINTS), factor * texture, factor)
    factor = torch.where(ids == PAINT["background"], 1 + p["bg_grad"].view(n, 1, 1) * v, factor)
    return (image * factor.unsqueeze(1)).clamp(0, 1)


def _paint_ids(p: dict[str, torch.Tensor], s: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Paint-id map [B, S, S] (back to front; later parts cover earlier ones) and the grids
    u [1, 1, S], v [1, S, 1]."""
    n = len(p["cx"])
    coords = (torch.arange(s, dtype=torch.float32) + 0.5) / s * 2 - 1
    # u varies along width, v along height; kept 1-D and broadcast, so a term in u alone costs
    # B*S, not B*S*S (the ellipse tests are separable)
    u = coords.view(1, 1, s)
    v = coords.view(1, s, 1)

    def col(t):  # [B] -> [B, 1, 1]
        return t.view(n, 1, 1)

    cx, cy, sc, yaw = col(p["cx"]), col(p["cy"]), col(p["scale"]), col(p["yaw"])
    male, smiling, open_mouth = col(p["Male"]), col(p["Smiling"]), col(p["Mouth_Slightly_Open"])
    a = 0.34 * sc * (1 + 0.06 * male)  # face half-width
    b = 0.44 * sc  # face half-height
    shift = 0.14 * a * yaw  # features move sideways with the head's turn
    ids = torch.zeros(n, s, s, dtype=torch.long)

    def paint(mask: torch.Tensor, name: str) -> None:
        ids.masked_fill_(mask, PAINT[name])

    # clothes, neck, long hair (not male) falling behind the face to the shoulders
    shoulders = _ellipse(u, v, cx, cy + b + 0.55, 0.95 * sc, 0.42 * sc)
    paint(shoulders, "cloth")
    neck = ((u - cx).abs() <= 0.42 * a * (1 + 0.15 * male)) & (v >= cy + 0.4 * b) & (v <= cy + b + 0.3)
    paint(neck & (~shoulders | (v < cy + b + 0.2)), "neck")
    long_hair = (1 - male).bool() & (
        _ellipse(u, v, cx, cy - 0.1 * b, 1.3 * a, 1.05 * b)
        | (((u - cx).abs() <= 1.25 * a) & (v >= cy - 0.1 * b) & (v <= cy + 1.25 * b))
    )
    paint(long_hair, "hair_long")
    # ears at the sides, the far one narrower when the head turns
    for side, part in ((-1, "r_ear"), (1, "l_ear")):
        ex = cx + side * (a * 0.97) + shift * 0.5
        paint(_ellipse(u, v, ex, cy + 0.02, 0.09 * sc * (1 - 0.35 * side * yaw), 0.17 * sc) & ~long_hair, part)
    # hair cap around the top of the head, then the face over it
    paint(_ellipse(u, v, cx, cy - 0.14 * b, 1.1 * a, 1.02 * b) & (v < cy - 0.05 * b), "hair_cap")
    face = _ellipse(u, v, cx, cy, a, b)
    paint(face, "skin")
    # beard: darker lower face, labelled skin as in CelebAMask-HQ
    paint(face & (v > cy + 0.25 * b) & (1 - col(p["No_Beard"])).bool(), "beard")
    # eyes (white, iris), brows, nose
    eye_y = cy - 0.1 * b
    eye_dx = 0.38 * a
    eye_x = {}
    for side, prefix in ((-1, "r"), (1, "l")):
        ex = cx + shift + side * eye_dx * (1 - 0.12 * side * yaw)
        eye_x[side] = ex
        eye_mask = _ellipse(u, v, ex, eye_y, 0.14 * a, 0.065 * b)
        paint(eye_mask, f"{prefix}_eye")
        paint(eye_mask & _ellipse(u, v, ex + 0.03 * a * yaw, eye_y, 0.06 * a, 0.065 * b), f"{prefix}_iris")
        paint(_ellipse(u, v, ex, eye_y - 0.17 * b, 0.17 * a, 0.035 * b), f"{prefix}_brow")
    nose_top, nose_bottom = eye_y + 0.08 * b, cy + 0.28 * b
    nose_x = cx + 1.3 * shift
    paint((v >= nose_top) & (v <= nose_bottom) & ((u - nose_x).abs() <= 0.02 + 0.32 * (v - nose_top)), "nose")
    # mouth: smiling bends the corners up and widens it; an open mouth shows its inside
    mx, my = cx + 1.1 * shift, cy + 0.55 * b
    w = 0.34 * a * (1 + 0.2 * smiling)
    x = (u - mx) / w
    inside = x.abs() <= 1
    centre = my - (0.10 * smiling - 0.02) * b * (x**2)  # y grows downwards: corners up when smiling
    gap = 0.07 * b * open_mouth
    lip = 0.06 * b * (1 - 0.5 * x**2)
    paint(inside & (v >= centre - gap / 2 - lip) & (v < centre - gap / 2), "u_lip")
    paint(inside & (v >= centre - gap / 2) & (v < centre + gap / 2), "mouth")
    paint(inside & (v >= centre + gap / 2) & (v < centre + gap / 2 + 1.2 * lip), "l_lip")
    # bangs: hair over the forehead, above the brows
    paint(face & (v < eye_y - 0.26 * b) & col(p["Bangs"]).bool(), "bangs")
    # eyeglasses: two rings and a bridge
    frames = ((u - (cx + shift)).abs() <= eye_dx - 0.2 * a) & ((v - eye_y).abs() <= 0.02 * b)
    for ex in eye_x.values():
        frames |= _ellipse(u, v, ex, eye_y, 0.25 * a, 0.15 * b) & ~_ellipse(u, v, ex, eye_y, 0.19 * a, 0.105 * b)
    paint(frames & col(p["Eyeglasses"]).bool(), "eye_g")
    # hat: a crown over the top of the head and a brim
    brim_y = cy - 0.62 * b
    crown = _ellipse(u, v, cx, brim_y, 1.05 * a, 0.55 * b) & (v <= brim_y)
    brim = ((u - cx).abs() <= 1.45 * a) & (v > brim_y - 0.05 * b) & (v <= brim_y + 0.06 * b)
    paint((crown | brim) & col(p["Wearing_Hat"]).bool(), "hat")
    return ids, u, v
