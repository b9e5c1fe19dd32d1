"""A synthetic dash-cam dataset in the Mapillary Street-Level Sequences (MSLS) layout.

Real street imagery cannot be downloaded here, so the demo dataset is drawn: perspective road
scenes seen from a car, whose cues (driving side, road markings, buildings, trees, sky, wires,
lamps, vehicles) follow a per-city style. Every cue is randomised per sequence and sometimes
borrowed from a look-alike city, so the task is learnable but not trivial, and confusions fall
between plausible pairs. Images come in sequences of consecutive frames like MSLS's, so a random
split leaks exactly as it does on real data.

Scenes are drawn for right-hand traffic; left-hand cities get the finished frame mirrored, which
is what makes a horizontally flipped image look like another city.
"""
from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import shutil
import string
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

SCENES = ("highway", "suburban", "city_centre", "park")  # the values of scene.csv
NIGHT_RATE = 0.10
DASHBOARD_RATE = 0.16   # of forward-facing sequences, so ~15 % of all
QUERY_SHARE = 0.2       # of sequences per city, as in MSLS
PANO_RATE = 0.015       # a handful of panoramas, which readers are expected to drop
BORROW_RATE = 0.12      # chance per cue group that a sequence takes it from a look-alike city
VIEWS = {"Forward": 0.9, "Backward": 0.06, "Sideways": 0.04}
ZOOM_MARGIN = 1.3       # the scene is drawn this much larger, then cropped closer frame by frame
Z_NEAR = 0.8            # metres: nearer points are clamped so that polygons stay finite
KEY_ALPHABET = string.ascii_letters + string.digits + "-_"
README_TITLE = "Synthetic street scenes"

_WHITE, _YELLOW = (238, 238, 232), (236, 192, 40)
_NEUTRAL_CARS = [("car", (232, 232, 230), 4), ("car", (28, 28, 30), 3),
                 ("car", (160, 163, 168), 3), ("car", (88, 92, 98), 2), ("car", (135, 28, 32), 1),
                 ("car", (32, 52, 105), 1), ("suv", (230, 230, 228), 1), ("suv", (30, 30, 32), 1),
                 ("van", (236, 236, 236), 1)]

# A style is a flat dict. Colours are RGB, (lo, hi) pairs are ranges, dicts are weights.
BASE_STYLE = dict(
    lat=0.0, lon=0.0, utc=0.0,          # city centre, and local time = UTC + utc hours
    left_hand=False,                    # driving side
    scenes=dict(highway=0.2, suburban=0.35, city_centre=0.3, park=0.15),
    weather=dict(clear=0.4, cloudy=0.35, overcast=0.2, haze=0.05),
    sky=(96, 150, 214),                 # clear-sky zenith
    snow_months=(), snow_rate=0.0,      # chance of snow on the ground in those months
    leafless=True,                      # deciduous trees lose their leaves in winter
    lane_width=(3.0, 3.5), centre_line=(_WHITE, "dashed"),  # or "solid", "double"
    edge_line=None,                     # colour of double lines along the kerbs (London's yellow)
    asphalt=(86, 86, 90), sidewalk=(165, 162, 155), kerb=(178, 178, 172),
    bike_lane=None,                     # colour of a cycle path between kerb and pavement
    grass=(92, 124, 60),
    facades=[(200, 195, 185)], trim=(225, 222, 215), glass=(62, 72, 88),
    roofs=dict(flat=1.0),               # flat, pitched, mansard, gable (narrow, street-facing)
    roof_colours=[(90, 80, 75)],
    centre_storeys=(4, 8), suburb_storeys=(1, 2), window_spacing=(2.6, 3.4),
    signs=0.2,                          # shop-sign chance; above 0.6 signs also stick out
    graffiti=0.05,
    trees=dict(deciduous=1.0),          # deciduous, plane, birch, conifer, palm, eucalyptus,
    tree_density=1.0,                   # tropical, shrub
    poles=0.0, wires=(2, 4),            # chance of utility poles, and wires between them
    pole_colour=(112, 88, 62), tram_wires=0.0,
    lamps=dict(arm=1.0),                # arm (cobra head), post (lantern), catenary (over road)
    lamp_light=(255, 186, 110),
    vehicles=_NEUTRAL_CARS,             # (kind, colour, weight)
    traffic=1.0, pedestrians=1.0,
    gantry=(24, 106, 62),               # motorway sign colour
    lookalikes=(),                      # cities whose cues a sequence may borrow
)

# Fields a sequence may borrow from a look-alike city, in groups that belong together.
CUE_GROUPS = {
    "sky": ("weather", "sky"),
    "road": ("lane_width", "centre_line", "edge_line", "asphalt", "sidewalk", "kerb",
             "bike_lane"),
    "buildings": ("facades", "roofs", "roof_colours", "trim", "centre_storeys", "suburb_storeys",
                  "window_spacing", "signs", "graffiti"),
    "vegetation": ("trees", "tree_density", "grass"),
    "street_furniture": ("poles", "wires", "pole_colour", "tram_wires", "lamps", "lamp_light"),
    "vehicles": ("vehicles", "traffic", "gantry"),
}

# Each city overrides BASE_STYLE, or the city it is `like`. The order is that of ALL_CITIES.
CITY_STYLES = {
    "tokyo": dict(
        lat=35.6812, lon=139.7671, utc=9, left_hand=True,
        scenes=dict(highway=0.08, suburban=0.32, city_centre=0.48, park=0.12),
        weather=dict(clear=0.35, cloudy=0.35, overcast=0.15, haze=0.15),
        lane_width=(2.7, 3.2), centre_line=(_WHITE, "solid"), asphalt=(74, 74, 80),
        sidewalk=(150, 150, 148), kerb=(196, 196, 190),
        facades=[(226, 222, 214), (200, 198, 192), (182, 172, 160), (150, 150, 150),
                 (212, 202, 186), (122, 112, 106)],
        roofs=dict(flat=0.7, pitched=0.3), roof_colours=[(70, 76, 88), (60, 60, 64)],
        centre_storeys=(3, 10), suburb_storeys=(2, 3), window_spacing=(2.2, 3.0), signs=0.85,
        trees=dict(deciduous=0.5, plane=0.3, conifer=0.2), tree_density=0.5,
        poles=0.95, wires=(5, 9), pole_colour=(150, 150, 144), lamps=dict(arm=1.0),
        lamp_light=(232, 238, 255), traffic=1.2, pedestrians=1.5,
        vehicles=[("kei", (238, 238, 236), 4), ("car", (236, 236, 234), 3),
                  ("car", (160, 163, 168), 2), ("car", (28, 28, 30), 2),
                  ("van", (238, 238, 238), 2), ("cab", (40, 40, 48), 1),
                  ("kei", (210, 200, 60), 0.5)],
        lookalikes=("bangkok", "saopaulo", "manila"),
    ),
    "london": dict(
        lat=51.5074, lon=-0.1278, utc=0, left_hand=True,
        scenes=dict(highway=0.08, suburban=0.37, city_centre=0.45, park=0.10),
        weather=dict(clear=0.2, cloudy=0.4, overcast=0.35, haze=0.05), sky=(112, 152, 200),
        snow_months=(1, 2), snow_rate=0.05,
        lane_width=(2.9, 3.3), edge_line=_YELLOW, asphalt=(80, 80, 84), sidewalk=(170, 168, 160),
        facades=[(172, 142, 102), (150, 112, 82), (140, 72, 56), (236, 232, 224),
                 (200, 190, 170)],
        roofs=dict(pitched=0.5, flat=0.3, mansard=0.2),
        roof_colours=[(74, 80, 90), (120, 70, 55)],
        trim=(240, 238, 232), centre_storeys=(3, 6), suburb_storeys=(2, 3),
        trees=dict(plane=0.6, deciduous=0.4), lamps=dict(post=0.6, arm=0.4),
        vehicles=_NEUTRAL_CARS + [("cab", (20, 20, 22), 4), ("bus", (188, 26, 28), 1.5)],
        gantry=(30, 70, 160), lookalikes=("melbourne", "boston", "paris"),
    ),
    "boston": dict(
        lat=42.3601, lon=-71.0589, utc=-5,
        scenes=dict(highway=0.15, suburban=0.40, city_centre=0.33, park=0.12),
        weather=dict(clear=0.45, cloudy=0.3, overcast=0.2, haze=0.05),
        snow_months=(12, 1, 2, 3), snow_rate=0.4,
        lane_width=(3.2, 3.7), centre_line=(_YELLOW, "double"), asphalt=(90, 90, 92),
        facades=[(150, 66, 50), (126, 60, 46), (170, 92, 70), (210, 200, 180), (122, 130, 140),
                 (182, 186, 176), (116, 82, 66)],
        roofs=dict(flat=0.5, pitched=0.4, mansard=0.1), centre_storeys=(3, 6),
        suburb_storeys=(2, 3), trees=dict(deciduous=0.7, plane=0.1, conifer=0.2),
        poles=0.7, wires=(3, 5), lamps=dict(arm=0.8, post=0.2),
        vehicles=_NEUTRAL_CARS + [("suv", (110, 112, 116), 2), ("pickup", (40, 40, 44), 1),
                                  ("car", (244, 200, 30), 0.6)],
        lookalikes=("toronto", "ottawa", "london"),
    ),
    "melbourne": dict(
        lat=-37.8136, lon=144.9631, utc=10, left_hand=True,
        scenes=dict(highway=0.15, suburban=0.42, city_centre=0.30, park=0.13),
        weather=dict(clear=0.55, cloudy=0.3, overcast=0.1, haze=0.05), sky=(82, 146, 220),
        lane_width=(3.2, 3.6), asphalt=(88, 88, 90),
        facades=[(160, 96, 70), (192, 172, 140), (120, 116, 110), (222, 216, 206),
                 (176, 150, 120)],
        roofs=dict(pitched=0.5, flat=0.4, gable=0.1),
        roof_colours=[(150, 72, 52), (160, 166, 166)], centre_storeys=(3, 9),
        trees=dict(eucalyptus=0.5, plane=0.3, deciduous=0.2), grass=(110, 128, 70),
        poles=0.5, wires=(2, 4), pole_colour=(140, 140, 134), tram_wires=0.45,
        lamp_light=(246, 222, 172),
        vehicles=_NEUTRAL_CARS + [("pickup", (236, 236, 236), 1.5),
                                  ("tram", (232, 232, 224), 0.5)],
        lookalikes=("london", "boston", "phoenix"),
    ),
    "amsterdam": dict(
        lat=52.3676, lon=4.9041, utc=1,
        scenes=dict(highway=0.05, suburban=0.20, city_centre=0.60, park=0.15),
        weather=dict(clear=0.25, cloudy=0.4, overcast=0.3, haze=0.05), sky=(110, 150, 200),
        snow_months=(1, 2), snow_rate=0.08,
        lane_width=(2.8, 3.1), asphalt=(72, 72, 76), bike_lane=(158, 72, 62),
        sidewalk=(152, 122, 106),
        facades=[(96, 56, 46), (122, 66, 50), (72, 46, 40), (160, 120, 90), (110, 84, 70)],
        roofs=dict(gable=0.6, pitched=0.2, flat=0.2), trim=(236, 234, 228),
        centre_storeys=(3, 5), suburb_storeys=(2, 3), window_spacing=(1.8, 2.4),
        trees=dict(deciduous=0.6, plane=0.3, birch=0.1), tree_density=1.4, grass=(80, 124, 52),
        tram_wires=0.5, lamps=dict(post=0.5, catenary=0.2, arm=0.3), lamp_light=(240, 234, 220),
        vehicles=_NEUTRAL_CARS + [("tram", (230, 230, 226), 0.5), ("van", (240, 240, 240), 1)],
        gantry=(22, 60, 150), lookalikes=("helsinki", "berlin", "cph"),
    ),
    "helsinki": dict(
        lat=60.1699, lon=24.9384, utc=2,
        scenes=dict(highway=0.15, suburban=0.30, city_centre=0.35, park=0.20),
        weather=dict(clear=0.3, cloudy=0.35, overcast=0.3, haze=0.05), sky=(104, 150, 206),
        snow_months=(11, 12, 1, 2, 3), snow_rate=0.55,
        lane_width=(3.0, 3.5), centre_line=(_YELLOW, "dashed"), asphalt=(96, 96, 98),
        facades=[(214, 186, 122), (226, 212, 162), (190, 190, 186), (210, 176, 156),
                 (170, 190, 166), (230, 230, 224)],
        roofs=dict(pitched=0.4, flat=0.5, mansard=0.1),
        roof_colours=[(60, 60, 66), (122, 62, 52)], centre_storeys=(4, 7), suburb_storeys=(1, 3),
        trees=dict(birch=0.4, conifer=0.4, deciduous=0.2), tree_density=1.2,
        poles=0.2, wires=(1, 2), tram_wires=0.5, lamps=dict(catenary=0.5, arm=0.5),
        lamp_light=(250, 226, 172), vehicles=_NEUTRAL_CARS + [("tram", (70, 140, 72), 0.5)],
        gantry=(22, 60, 150), lookalikes=("amsterdam", "stockholm", "berlin"),
    ),
    "saopaulo": dict(
        lat=-23.5505, lon=-46.6333, utc=-3, leafless=False,
        scenes=dict(highway=0.15, suburban=0.25, city_centre=0.50, park=0.10),
        weather=dict(clear=0.3, cloudy=0.35, overcast=0.1, haze=0.25), sky=(122, 160, 208),
        centre_line=(_YELLOW, "dashed"), asphalt=(80, 80, 82), sidewalk=(176, 170, 160),
        facades=[(170, 170, 165), (140, 140, 138), (230, 228, 220), (200, 186, 160),
                 (150, 166, 180)],
        roofs=dict(flat=0.8, pitched=0.2), roof_colours=[(160, 80, 56)],
        centre_storeys=(6, 20), suburb_storeys=(1, 3), signs=0.3, graffiti=0.7,
        trees=dict(tropical=0.5, palm=0.3, deciduous=0.2), tree_density=0.8,
        poles=0.6, wires=(3, 5), pole_colour=(150, 150, 146), lamps=dict(arm=1.0),
        vehicles=_NEUTRAL_CARS + [("car", (236, 236, 236), 3), ("bus", (30, 92, 160), 0.6)],
        lookalikes=("tokyo", "phoenix", "buenosaires"),
    ),
    "phoenix": dict(
        lat=33.4484, lon=-112.0740, utc=-7, leafless=False,
        scenes=dict(highway=0.40, suburban=0.42, city_centre=0.10, park=0.08),
        weather=dict(clear=0.75, cloudy=0.15, haze=0.1), sky=(70, 140, 226),
        lane_width=(3.5, 3.9), centre_line=(_YELLOW, "double"), asphalt=(110, 106, 100),
        sidewalk=(192, 182, 166), grass=(176, 152, 112),
        facades=[(216, 190, 150), (200, 170, 130), (226, 210, 186), (186, 150, 120),
                 (190, 120, 80)],
        roofs=dict(flat=0.5, pitched=0.5), roof_colours=[(172, 92, 62), (150, 130, 110)],
        centre_storeys=(2, 6), suburb_storeys=(1, 1),
        trees=dict(palm=0.5, shrub=0.3, deciduous=0.2), tree_density=0.7,
        poles=0.6, wires=(2, 4), lamps=dict(arm=1.0),
        vehicles=_NEUTRAL_CARS + [("pickup", (236, 236, 236), 2), ("pickup", (40, 40, 40), 1),
                                  ("suv", (160, 160, 164), 2)],
        lookalikes=("austin", "saopaulo", "melbourne"),
    ),
    "toronto": dict(
        like="boston", lat=43.6532, lon=-79.3832, centre_storeys=(4, 15), snow_rate=0.5,
        facades=[(150, 66, 50), (170, 92, 70), (122, 140, 150), (200, 196, 186), (96, 106, 116)],
        tram_wires=0.5,
        vehicles=_NEUTRAL_CARS + [("tram", (200, 30, 30), 0.6), ("suv", (110, 112, 116), 2)],
        lookalikes=("boston", "ottawa"),
    ),
    "berlin": dict(
        like="helsinki", lat=52.52, lon=13.405, utc=1, snow_months=(12, 1, 2), snow_rate=0.15,
        centre_line=(_WHITE, "dashed"), tram_wires=0.3, graffiti=0.4,
        facades=[(214, 200, 170), (190, 186, 176), (226, 214, 190), (170, 160, 150),
                 (200, 170, 140)],
        trees=dict(deciduous=0.6, plane=0.2, conifer=0.2), lamps=dict(post=0.4, arm=0.6),
        vehicles=_NEUTRAL_CARS + [("tram", (236, 200, 30), 0.4)],
        lookalikes=("helsinki", "amsterdam", "budapest"),
    ),
    "paris": dict(
        lat=48.8566, lon=2.3522, utc=1,
        scenes=dict(highway=0.1, suburban=0.25, city_centre=0.55, park=0.10),
        weather=dict(clear=0.35, cloudy=0.4, overcast=0.2, haze=0.05),
        facades=[(222, 206, 176), (206, 190, 160), (230, 220, 200), (196, 184, 160)],
        roofs=dict(mansard=0.8, flat=0.2), roof_colours=[(120, 126, 136)],
        centre_storeys=(5, 7), trees=dict(plane=0.8, deciduous=0.2), signs=0.4,
        lamps=dict(post=0.5, arm=0.5), lamp_light=(255, 200, 132), gantry=(22, 60, 150),
        lookalikes=("budapest", "london", "buenosaires"),
    ),
    "moscow": dict(
        lat=55.7558, lon=37.6173, utc=3,
        scenes=dict(highway=0.25, suburban=0.25, city_centre=0.35, park=0.15),
        snow_months=(11, 12, 1, 2, 3), snow_rate=0.6, lane_width=(3.2, 3.7),
        centre_line=(_WHITE, "double"),
        facades=[(200, 180, 150), (190, 190, 186), (214, 196, 160), (170, 120, 100),
                 (226, 220, 206)],
        centre_storeys=(6, 14), suburb_storeys=(5, 9),
        trees=dict(birch=0.4, deciduous=0.4, conifer=0.2), lookalikes=("helsinki", "budapest"),
    ),
    "zurich": dict(
        lat=47.3769, lon=8.5417, utc=1, snow_months=(12, 1, 2), snow_rate=0.15,
        facades=[(230, 228, 220), (212, 202, 182), (200, 196, 186), (220, 200, 170)],
        roofs=dict(pitched=0.6, flat=0.3, mansard=0.1),
        roof_colours=[(150, 80, 60), (90, 90, 96)], centre_storeys=(4, 6),
        tram_wires=0.7, lamps=dict(catenary=0.4, arm=0.6),
        trees=dict(deciduous=0.5, conifer=0.3, plane=0.2),
        vehicles=_NEUTRAL_CARS + [("tram", (40, 90, 170), 0.6)],
        lookalikes=("berlin", "budapest", "paris"),
    ),
    "sf": dict(
        like="boston", lat=37.7749, lon=-122.4194, utc=-8, snow_rate=0.0, leafless=False,
        weather=dict(clear=0.4, cloudy=0.25, haze=0.35),
        facades=[(222, 202, 172), (182, 202, 212), (230, 220, 230), (202, 212, 182),
                 (236, 236, 230)],
        roofs=dict(gable=0.4, flat=0.6), tram_wires=0.3,
        trees=dict(deciduous=0.4, palm=0.2, eucalyptus=0.2, conifer=0.2),
        lookalikes=("boston", "phoenix"),
    ),
    "bangkok": dict(
        like="tokyo", lat=13.7563, lon=100.5018, utc=7, leafless=False,
        weather=dict(clear=0.3, cloudy=0.3, haze=0.4), centre_line=(_YELLOW, "solid"),
        facades=[(200, 196, 186), (180, 176, 166), (222, 212, 192), (160, 150, 140),
                 (230, 226, 206)],
        wires=(6, 10), trees=dict(tropical=0.6, palm=0.3, deciduous=0.1), tree_density=0.8,
        lamp_light=(255, 190, 120),
        vehicles=_NEUTRAL_CARS + [("car", (236, 92, 160), 2), ("car", (120, 190, 60), 1.5),
                                  ("tuktuk", (30, 80, 160), 1)],
        lookalikes=("tokyo", "manila", "goa"),
    ),
    "budapest": dict(
        like="paris", lat=47.4979, lon=19.0402, utc=1, snow_months=(12, 1, 2), snow_rate=0.15,
        facades=[(190, 176, 150), (170, 160, 146), (212, 196, 160), (160, 150, 140)],
        roofs=dict(pitched=0.5, mansard=0.2, flat=0.3),
        roof_colours=[(150, 80, 60), (100, 100, 106)],
        trees=dict(deciduous=0.6, plane=0.4), tram_wires=0.6,
        vehicles=_NEUTRAL_CARS + [("tram", (240, 200, 30), 0.6)],
        lookalikes=("paris", "berlin", "moscow"),
    ),
    "austin": dict(
        like="phoenix", lat=30.2672, lon=-97.7431, utc=-6, grass=(104, 130, 62),
        weather=dict(clear=0.6, cloudy=0.3, haze=0.1), centre_storeys=(3, 14),
        trees=dict(deciduous=0.6, shrub=0.3, palm=0.1), tree_density=1.0,
        lookalikes=("phoenix", "boston"),
    ),
    "ottawa": dict(like="toronto", lat=45.4215, lon=-75.6972, snow_rate=0.55,
                   centre_storeys=(3, 10), tram_wires=0.0, lookalikes=("toronto", "boston")),
    "trondheim": dict(
        like="helsinki", lat=63.4305, lon=10.3951, utc=1,
        facades=[(180, 52, 42), (222, 202, 122), (240, 240, 234), (72, 112, 142),
                 (200, 140, 60)],
        roofs=dict(pitched=0.8, flat=0.2), centre_storeys=(2, 4), tram_wires=0.1,
        trees=dict(birch=0.4, conifer=0.5, deciduous=0.1), lookalikes=("helsinki", "stockholm"),
    ),
    "goa": dict(
        lat=15.4909, lon=73.8278, utc=5.5, left_hand=True, leafless=False,
        scenes=dict(highway=0.1, suburban=0.5, city_centre=0.15, park=0.25),
        weather=dict(clear=0.45, cloudy=0.35, haze=0.2), asphalt=(72, 72, 72),
        sidewalk=(150, 110, 84), grass=(96, 120, 52),
        facades=[(222, 202, 92), (212, 122, 92), (122, 172, 202), (236, 236, 226),
                 (180, 200, 150)],
        roofs=dict(pitched=0.6, flat=0.4), roof_colours=[(160, 80, 56)],
        centre_storeys=(1, 3), suburb_storeys=(1, 2),
        trees=dict(palm=0.6, tropical=0.4), tree_density=1.4, poles=0.8, wires=(3, 6),
        pole_colour=(150, 150, 146),
        vehicles=_NEUTRAL_CARS + [("tuktuk", (30, 30, 30), 2), ("van", (236, 236, 236), 1)],
        pedestrians=0.8, lookalikes=("bengaluru", "bangkok"),
    ),
    "amman": dict(
        lat=31.9454, lon=35.9284, utc=2, leafless=False,
        weather=dict(clear=0.7, cloudy=0.1, haze=0.2), sky=(92, 150, 220),
        grass=(186, 166, 126), sidewalk=(196, 190, 176),
        facades=[(226, 216, 190), (210, 200, 176), (232, 226, 210), (200, 186, 160)],
        roofs=dict(flat=1.0), centre_storeys=(3, 6), suburb_storeys=(2, 3), signs=0.4,
        trees=dict(conifer=0.4, shrub=0.4, palm=0.2), tree_density=0.4, poles=0.3,
        vehicles=_NEUTRAL_CARS + [("car", (244, 200, 30), 2)],
        lookalikes=("phoenix", "athens"),
    ),
    "nairobi": dict(
        lat=-1.2921, lon=36.8219, utc=3, left_hand=True, leafless=False,
        weather=dict(clear=0.4, cloudy=0.4, overcast=0.1, haze=0.1), grass=(110, 126, 60),
        sidewalk=(160, 110, 80),
        facades=[(200, 190, 170), (170, 160, 150), (210, 160, 120), (226, 222, 210)],
        roofs=dict(pitched=0.4, flat=0.6), roof_colours=[(150, 150, 150), (150, 80, 60)],
        centre_storeys=(3, 12), trees=dict(tropical=0.5, eucalyptus=0.3, palm=0.2), poles=0.6,
        vehicles=_NEUTRAL_CARS + [("van", (236, 236, 236), 2), ("van", (200, 40, 40), 1)],
        lookalikes=("kampala", "goa"),
    ),
    "manila": dict(
        like="bangkok", lat=14.5995, lon=120.9842, utc=8, left_hand=False,
        facades=[(190, 186, 176), (210, 200, 180), (160, 156, 150), (200, 210, 220)],
        vehicles=_NEUTRAL_CARS + [("van", (186, 186, 196), 3), ("tuktuk", (60, 140, 60), 1)],
        lookalikes=("bangkok", "saopaulo"),
    ),
    "cph": dict(
        like="amsterdam", lat=55.6761, lon=12.5683, bike_lane=(108, 108, 112),
        facades=[(200, 122, 72), (222, 192, 122), (160, 62, 50), (226, 222, 210),
                 (140, 90, 70)],
        roofs=dict(pitched=0.5, mansard=0.2, flat=0.3), lamps=dict(catenary=0.6, arm=0.4),
        tram_wires=0.0, lookalikes=("amsterdam", "stockholm"),
    ),
    "miami": dict(
        like="phoenix", lat=25.7617, lon=-80.1918, utc=-5, grass=(86, 132, 56),
        weather=dict(clear=0.6, cloudy=0.35, haze=0.05),
        facades=[(236, 226, 200), (200, 230, 226), (240, 200, 180), (250, 250, 244)],
        centre_storeys=(4, 20), trees=dict(palm=0.7, tropical=0.3),
        lookalikes=("phoenix", "saopaulo"),
    ),
    "athens": dict(
        lat=37.9838, lon=23.7275, utc=2, leafless=False,
        weather=dict(clear=0.7, cloudy=0.2, haze=0.1), grass=(150, 140, 96),
        facades=[(236, 232, 222), (216, 210, 196), (226, 218, 200), (200, 196, 186)],
        roofs=dict(flat=0.9, pitched=0.1), centre_storeys=(4, 7), suburb_storeys=(2, 3),
        signs=0.5, graffiti=0.4, trees=dict(deciduous=0.4, conifer=0.3, palm=0.3),
        tree_density=0.7, lookalikes=("amman", "saopaulo"),
    ),
    "buenosaires": dict(
        like="paris", lat=-34.6037, lon=-58.3816, utc=-3, centre_line=(_YELLOW, "double"),
        facades=[(210, 196, 170), (190, 186, 176), (226, 216, 196), (170, 170, 166)],
        roofs=dict(flat=0.6, mansard=0.4), centre_storeys=(5, 12), poles=0.4, graffiti=0.3,
        lookalikes=("saopaulo", "paris"),
    ),
    "stockholm": dict(
        like="helsinki", lat=59.3293, lon=18.0686, utc=1, centre_line=(_WHITE, "dashed"),
        facades=[(210, 160, 92), (230, 200, 140), (180, 92, 62), (226, 222, 210)],
        snow_rate=0.4, lamps=dict(catenary=0.7, arm=0.3), lookalikes=("helsinki", "cph"),
    ),
    "bengaluru": dict(
        like="goa", lat=12.9716, lon=77.5946, utc=5.5,
        scenes=dict(highway=0.1, suburban=0.35, city_centre=0.4, park=0.15),
        centre_storeys=(2, 6), wires=(5, 9), trees=dict(tropical=0.7, palm=0.3),
        lookalikes=("goa", "bangkok"),
    ),
    "kampala": dict(like="nairobi", lat=0.3476, lon=32.5825, sidewalk=(170, 100, 70),
                    centre_storeys=(2, 6), lookalikes=("nairobi", "goa")),
}
ALL_CITIES = tuple(CITY_STYLES)
DEFAULT_CITIES = ("tokyo", "london", "boston", "melbourne", "amsterdam", "helsinki", "saopaulo",
                  "phoenix")  # 8 MSLS train cities: both driving sides, several climates
MSLS_TEST_CITIES = ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala")
MSLS_TEST_CSVS = ("seq_info.csv", "subtask_index.csv")  # all that MSLS's test cities come with


def city_style(city: str) -> dict:
    """The full style of `city`: BASE_STYLE, then each `like` ancestor, then its own fields."""
    if city not in CITY_STYLES:
        raise ValueError(f"unknown city style {city!r}; known: {', '.join(CITY_STYLES)}")
    own = CITY_STYLES[city]
    parent = city_style(own["like"]) if "like" in own else BASE_STYLE
    return {**parent, **{field: value for field, value in own.items() if field != "like"}}


def _resolve_cities(cities) -> list[str]:
    if isinstance(cities, int):
        if not 1 <= cities <= len(ALL_CITIES):
            raise ValueError(f"cities must be between 1 and {len(ALL_CITIES)}")
        return list(ALL_CITIES[:cities])
    names = [str(city).strip().lower() for city in cities]
    for name in names:
        city_style(name)
    if len(set(names)) != len(names):
        raise ValueError("cities contains duplicates")
    return names


def synthesize(out, cities=DEFAULT_CITIES, per_city=300, size=(320, 240), seed=0, progress=True,
               workers=None, msls_test_cities=0) -> Path:
    """Write a synthetic MSLS-layout dataset under `out` and return `out`.

    `cities` is an int N (the first N of ALL_CITIES) or a sequence of names; `size` is (width,
    height). Each sequence is seeded from (seed, city, sequence index), so the bytes written do
    not depend on `workers` (None: all CPU cores). `msls_test_cities` N adds N more cities
    (MSLS's test cities first) under ``test/`` with only seq_info.csv and subtask_index.csv, the
    shape of MSLS's test subset, so readers can be tried on it. A previous synthetic dataset in
    `out` is replaced; a folder holding anything else is refused.
    """
    out = Path(out)
    if per_city < 1:
        raise ValueError("per_city must be at least 1")
    names = _resolve_cities(cities)
    test_names = [c for c in dict.fromkeys(MSLS_TEST_CITIES + ALL_CITIES) if c not in names]
    if not 0 <= msls_test_cities <= len(test_names):
        raise ValueError(f"msls_test_cities must be between 0 and {len(test_names)}")
    test_names = test_names[:msls_test_cities]
    width, height = int(size[0]), int(size[1])
    readme = out / "README.txt"
    for msls_split in ("train_val", "test"):
        if (out / msls_split).exists():
            if not (readme.is_file() and readme.read_text().startswith(README_TITLE)):
                raise FileExistsError(f"{out / msls_split} exists and is not a synthetic dataset")
            shutil.rmtree(out / msls_split)
    out.mkdir(parents=True, exist_ok=True)
    readme.write_text(
        f"{README_TITLE}: a synthetic stand-in for Mapillary Street-Level Sequences (MSLS).\n"
        "Every image is drawn by cityclf.synth; none is a photograph.\n"
        f"seed={seed} per_city={per_city} size={width}x{height}\n"
        f"cities={','.join(names)}\n"
        + (f"test_cities={','.join(test_names)} (under test/, with only "
           f"{' and '.join(MSLS_TEST_CSVS)})\n" if test_names else "")
        + "Ground-truth scene types are in train_val/<city>/{query,database}/scene.csv.\n")
    tasks = [(str(out), msls_split, city, index, length, split, (width, height), seed)
             for msls_split, group in (("train_val", names), ("test", test_names))
             for city in group
             for index, (length, split) in enumerate(_plan_city(city, per_city, seed))]
    workers = min(workers or os.cpu_count() or 1, len(tasks))
    rows = []
    pool = multiprocessing.Pool(workers) if workers > 1 else contextlib.nullcontext()
    bar = tqdm(total=per_city * (len(names) + len(test_names)), desc="synth", unit="img",
               disable=not progress)
    with pool, bar:
        render = pool.imap if workers > 1 else map
        for sequence_rows in render(_render_sequence, tasks):
            rows.extend(sequence_rows)
            bar.update(len(sequence_rows))
    rows = pd.DataFrame(rows)
    for msls_split, group in (("train_val", names), ("test", test_names)):
        for city in group:
            for split in ("query", "database"):
                _write_tables(out / msls_split / city / split,
                              rows[(rows["city"] == city) & (rows["split"] == split)])
    return out


def _plan_city(city: str, per_city: int, seed: int) -> list[tuple[int, str]]:
    """Sequence lengths (4-12, summing to per_city) and each one's split, query or database."""
    rng = np.random.default_rng([seed, _city_id(city)])
    lengths, remaining = [], per_city
    while remaining > 0:
        length = remaining if remaining <= 12 else int(rng.integers(4, min(12, remaining - 4) + 1))
        lengths.append(length)
        remaining -= length
    n_query = max(1, round(QUERY_SHARE * len(lengths))) if len(lengths) > 1 else 0
    query = set(rng.permutation(len(lengths))[:n_query].tolist())
    return [(length, "query" if i in query else "database") for i, length in enumerate(lengths)]


def _city_id(city: str) -> int:
    """A stable number for a city name (Python's hash() changes between processes)."""
    return zlib.crc32(city.encode())


def _render_sequence(task) -> list[dict]:
    """Draw one sequence, save its frames as JPEGs, and return one metadata row per frame."""
    out, msls_split, city, index, length, split, size, seed = task
    rng = np.random.default_rng([seed, _city_id(city), index])
    style = _sequence_style(city, rng)
    cond = _conditions(style, length, rng)
    canvas = _draw_scene(style, cond, (round(size[0] * ZOOM_MARGIN), round(size[1] * ZOOM_MARGIN)),
                         rng)
    folder = Path(out) / msls_split / city / split / "images"
    folder.mkdir(parents=True, exist_ok=True)
    sequence_key = _key(rng)
    rows = []
    frames = zip(_frames(canvas, cond, size, rng), _frame_metadata(style, cond, rng))
    for frame_number, (frame, meta) in enumerate(frames):
        key = _key(rng)
        frame.save(folder / f"{key}.jpg", "JPEG", quality=cond["jpeg_quality"])
        rows.append(dict(city=city, split=split, key=key, sequence_key=sequence_key,
                         frame_number=frame_number, unique_cluster=index, scene=cond["scene"],
                         night=cond["night"], control_panel=cond["dashboard"],
                         view_direction=cond["view"], pano=cond["pano"], **meta))
    return rows


def _key(rng) -> str:
    """A 22-character key like MSLS's image and sequence keys."""
    return "".join(KEY_ALPHABET[i] for i in rng.integers(0, len(KEY_ALPHABET), 22))


def _pick(rng, weights: dict):
    names = list(weights)
    p = np.array([weights[name] for name in names], float)
    return names[int(rng.choice(len(names), p=p / p.sum()))]


def _sequence_style(city: str, rng) -> dict:
    """The city's style where, per cue group, a sequence may take a look-alike city's cues."""
    style = city_style(city)
    for fields in CUE_GROUPS.values():
        if style["lookalikes"] and rng.random() < BORROW_RATE:
            donor = city_style(style["lookalikes"][int(rng.integers(len(style["lookalikes"])))])
            style.update({field: donor[field] for field in fields})
    return style


def _conditions(style: dict, length: int, rng) -> dict:
    """Everything fixed for a whole sequence: scene, view, time, season, weather, camera."""
    cond = dict(length=length, scene=_pick(rng, style["scenes"]),
                night=rng.random() < NIGHT_RATE, view=_pick(rng, VIEWS),
                pano=rng.random() < PANO_RATE)
    cond["dashboard"] = (cond["view"] == "Forward" and not cond["pano"]
                         and rng.random() < DASHBOARD_RATE)
    night_hours = [20, 21, 22, 23, 0, 1, 2, 3, 4, 5]
    hour = int(rng.choice(night_hours)) if cond["night"] else int(rng.integers(6, 20))
    local = datetime(int(rng.integers(2014, 2021)), int(rng.integers(1, 13)),
                     int(rng.integers(1, 29)), hour, int(rng.integers(60)), int(rng.integers(60)))
    cond["start"] = local - timedelta(hours=style["utc"])  # UTC
    month = local.month if style["lat"] >= 0 else (local.month + 5) % 12 + 1  # as if north
    cond["snow"] = local.month in style["snow_months"] and rng.random() < style["snow_rate"]
    cond["leafless"] = style["leafless"] and (month in (12, 1, 2, 3) or cond["snow"])
    cond["autumn"] = style["leafless"] and month in (10, 11) and not cond["snow"]
    weather = _pick(rng, style["weather"])
    if cond["snow"] and weather == "clear":
        weather = str(rng.choice(["overcast", "cloudy"]))
    cond["weather"] = weather
    cond["horizon"] = rng.uniform(0.4, 0.5)
    sideways = cond["view"] == "Sideways"  # turning the camera moves the vanishing point aside
    cond["vp_x"] = rng.uniform(-0.1, 0.12) if sideways else rng.uniform(0.46, 0.54)
    cond["sun_side"] = int(rng.choice([-1, 1]))
    cond["mirror"] = style["left_hand"] != (cond["view"] == "Backward")
    cond["jpeg_quality"] = int(rng.integers(72, 93))
    return cond


def _frame_metadata(style: dict, cond: dict, rng):
    """GPS, compass angle and time per frame: a drive near the city centre."""
    spread = 0.05 if cond["scene"] == "highway" else 0.025
    lat, lon = style["lat"] + rng.normal(0, spread), style["lon"] + rng.normal(0, spread)
    heading = rng.uniform(0, 360)
    step = rng.uniform(18, 30) if cond["scene"] == "highway" else rng.uniform(5, 12)
    facing = {"Forward": 0, "Backward": 180, "Sideways": 90}[cond["view"]]
    when = cond["start"].replace(tzinfo=timezone.utc).timestamp() * 1000
    for _ in range(cond["length"]):
        easting, northing = _utm(lat, lon)
        yield dict(lat=round(lat, 7), lon=round(lon, 7),
                   ca=round((heading + facing + rng.normal(0, 2)) % 360, 2),
                   captured_at=int(when), easting=round(easting, 3), northing=round(northing, 3))
        heading += rng.normal(0, 3)
        lat += step * math.cos(math.radians(heading)) / 111_132
        lon += step * math.sin(math.radians(heading)) / (111_320 * math.cos(math.radians(lat)))
        when += rng.uniform(1200, 3000)


def _utm(lat: float, lon: float) -> tuple[float, float]:
    """Approximate UTM easting/northing: right to metres locally, which is what neighbours need."""
    zone_meridian = math.floor((lon + 180) / 6) * 6 - 180 + 3
    easting = 500_000 + 0.9996 * 111_320 * math.cos(math.radians(lat)) * (lon - zone_meridian)
    northing = 0.9996 * 111_132 * lat + (10_000_000 if lat < 0 else 0)
    return easting, northing


def _write_tables(folder: Path, table: pd.DataFrame) -> None:
    """The MSLS CSVs of one city's query or database folder (each with MSLS's unnamed index
    column, and written even when empty), plus the ground-truth scene.csv; under test/ only
    MSLS_TEST_CSVS, as in MSLS."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    table = table.reset_index(drop=True)
    taken = pd.to_datetime(table["captured_at"], unit="ms")
    south = table["lat"] < 0
    is_winter = taken.dt.month.isin([12, 1, 2]) & ~south | taken.dt.month.isin([6, 7, 8]) & south
    is_old = taken.dt.year <= 2016
    # A query image is in subtask w2s if it is from winter (its database match being summer), etc.
    query = folder.name == "query"
    subtasks = pd.DataFrame({"key": table["key"], "w2s": is_winter == query,
                             "s2w": is_winter != query, "d2n": table["night"] != query,
                             "n2d": table["night"] == query, "o2n": is_old == query,
                             "n2o": is_old != query, "all": True})
    csvs = {"raw.csv": table[["key", "lon", "lat", "ca", "captured_at", "pano"]],
            "seq_info.csv": table[["key", "sequence_key", "frame_number"]],
            "subtask_index.csv": subtasks,
            "postprocessed.csv": table[["key", "easting", "northing", "unique_cluster",
                                        "control_panel", "night", "view_direction"]],
            "scene.csv": table[["key", "scene"]]}
    test = folder.parent.parent.name == "test"
    for name, csv in csvs.items():
        if name in MSLS_TEST_CSVS or not test:
            csv.to_csv(folder / name)


# ------------------------------------------------------------------------------------ drawing

def _jitter(rng, rgb, amount=10):
    """A random variant of a colour: mostly lighter or darker, slightly shifted in hue."""
    shift = rng.normal(0, amount)
    return tuple(int(np.clip(c + shift + rng.normal(0, amount / 3), 0, 255)) for c in rgb)


def _scale(rgb, factor):
    return tuple(int(min(255, c * factor)) for c in rgb)


def _mix(a, b, t):
    return tuple(int(x + (y - x) * t) for x, y in zip(a, b))


def _choose(rng, options):
    return options[int(rng.integers(len(options)))]


_SNOW = (232, 236, 242)
_WEATHER = {  # sky top, sky at the horizon (None: from the style's sky), light, visibility (m)
    "clear": (None, None, (1.04, 1.02, 0.97), 900),
    "cloudy": (None, None, (1.0, 1.0, 1.0), 700),
    "overcast": ((166, 172, 182), (200, 203, 208), (0.84, 0.86, 0.9), 420),
    "haze": ((174, 184, 194), (214, 208, 192), (0.94, 0.93, 0.89), 170),
}
_NIGHT = ((6, 8, 20), (42, 36, 40), (0.12, 0.13, 0.19), 350)


class _Painter:
    """Projects street coordinates onto the canvas and shades colours by distance and light.

    Coordinates are metres for right-hand traffic: x right of the camera, y up from the road,
    z ahead. Far things fade into the horizon colour (aerial perspective); at night surfaces go
    dark and light sources are drawn onto a separate layer that is blurred into glows.
    """

    def __init__(self, size, style, cond, rng):
        self.width, self.height = size
        self.f = 0.8 * self.width
        self.cx, self.hy = cond["vp_x"] * self.width, cond["horizon"] * self.height
        self.cam_h = 1.35
        self.night = cond["night"]
        top, horizon, light, self.visibility = _NIGHT if self.night else _WEATHER[cond["weather"]]
        top = _jitter(rng, top or style["sky"], 6)
        self.fog = _jitter(rng, horizon or _mix(top, (255, 255, 255), 0.62), 5)
        self.light = tuple(c * rng.uniform(0.93, 1.07) for c in light)
        self.stroke = max(1, round(self.width / 300))
        self.dash_phase = rng.uniform(0, 12)
        self.img = Image.fromarray(self._sky(top, cond, rng))
        self.draw = ImageDraw.Draw(self.img)
        self.glow = Image.new("RGB", size)
        self.glow_draw = ImageDraw.Draw(self.glow)

    def _sky(self, top, cond, rng):
        rows = np.clip(np.arange(self.height) / max(self.hy, 1), 0, 1)[:, None, None] ** 0.7
        sky = np.array(top, np.float32) + (np.array(self.fog, np.float32) - top) * rows
        sky = np.repeat(sky, self.width, axis=1)
        if cond["weather"] in ("cloudy", "overcast") and not self.night:
            mask = Image.new("L", (self.width, self.height))
            draw = ImageDraw.Draw(mask)
            for _ in range(int(rng.integers(4, 14))):
                x, y = rng.uniform(-0.1, 1.1) * self.width, rng.uniform(0, 0.8) * self.hy
                rx, ry = rng.uniform(0.06, 0.25) * self.width, rng.uniform(0.02, 0.08) * self.height
                draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.integers(120, 255)))
            mask = mask.filter(ImageFilter.GaussianBlur(self.width / 40))
            cloud = (244, 244, 246) if cond["weather"] == "cloudy" else (146, 150, 158)
            sky += (np.array(cloud, np.float32) - sky) * np.asarray(mask)[..., None] / 255 * 0.85
        return np.clip(sky, 0, 255).astype(np.uint8)

    def at(self, x, y, z):
        z = max(z, Z_NEAR)
        return self.cx + self.f * x / z, self.hy + self.f * (self.cam_h - y) / z

    def px(self, metres, z):
        return self.f * metres / max(z, Z_NEAR)

    def tone(self, rgb, z):
        fade = 1 - math.exp(-max(z, 0) / self.visibility)
        return tuple(int(min(255, c * light * (1 - fade) + fog * fade))
                     for c, light, fog in zip(rgb, self.light, self.fog))

    def poly(self, points, rgb, z=None):
        z = sum(point[2] for point in points) / len(points) if z is None else z
        self.draw.polygon([self.at(*point) for point in points], fill=self.tone(rgb, z))

    def ground(self, x0, x1, z0, z1, rgb):
        """A strip of road or ground, in depth bands so that it fades towards the horizon."""
        while z0 < z1:
            z_next = min(z1, max(z0 * 1.7, z0 + 3))
            self.poly([(x0, 0, z0), (x1, 0, z0), (x1, 0, z_next), (x0, 0, z_next)], rgb,
                      (z0 + z_next) / 2)
            z0 = z_next

    def stripe(self, x, width, rgb, dash=None):
        """A road marking along the road: solid, or dashed (on, off) metres."""
        if dash is None:
            self.ground(x - width / 2, x + width / 2, Z_NEAR, 1500, rgb)
            return
        on, off = dash
        for z in np.arange(Z_NEAR + self.dash_phase % (on + off), 160, on + off):
            self.poly([(x - width / 2, 0, z), (x + width / 2, 0, z), (x + width / 2, 0, z + on),
                       (x - width / 2, 0, z + on)], rgb)

    def line(self, points, rgb, metres=None):
        z = sum(point[2] for point in points) / len(points)
        width = self.stroke if metres is None else max(1, round(self.px(metres, z)))
        self.draw.line([self.at(*point) for point in points], fill=self.tone(rgb, z), width=width,
                       joint="curve")

    def blob(self, x, y, z, rx, ry, rgb):
        u, v = self.at(x, y, z)
        a, b = self.px(rx, z), self.px(ry, z)
        self.draw.ellipse((u - a, v - b, u + a, v + b), fill=self.tone(rgb, z))

    def light_source(self, x, y, z, radius, rgb, glow=3.0):
        """A lamp or headlight: a bright core, plus a halo on the glow layer at night."""
        u, v = self.at(x, y, z)
        r = max(0.8, self.px(radius, z))
        core = rgb if self.night else self.tone(rgb, z)
        self.draw.ellipse((u - r, v - r, u + r, v + r), fill=core)
        if self.night:
            g = min(r * glow + self.width / 200, self.width / 30)
            self.glow_draw.ellipse((u - g, v - g, u + g, v + g), fill=_scale(rgb, 0.55))

    def light_pool(self, x, z, radius, rgb):
        """Light falling on the road around (x, z) at night."""
        if self.night:
            u, v = self.at(x, 0, z)
            a = self.px(radius, z)
            b = a * self.cam_h / max(z, Z_NEAR) + 1
            self.glow_draw.ellipse((u - a, v - b, u + a, v + b), fill=_scale(rgb, 0.2))

    def headlight_beam(self):
        """Our own headlights on the road ahead at night, fading with distance."""
        for z0, z1, strength in ((1.5, 8, 0.2), (8, 15, 0.14), (15, 26, 0.08), (26, 45, 0.03)):
            corners = [(-1.5 - z0 / 5, 0, z0), (1.5 + z0 / 5, 0, z0), (1.5 + z1 / 5, 0, z1),
                       (-1.5 - z1 / 5, 0, z1)]
            self.glow_draw.polygon([self.at(*c) for c in corners],
                                   fill=_scale((250, 240, 210), strength))

    def finish(self) -> Image.Image:
        if not self.night:
            return self.img
        glow = self.glow.filter(ImageFilter.GaussianBlur(self.width / 40))
        lit = np.asarray(self.img, np.int16) + np.asarray(glow, np.int16)
        return Image.fromarray(np.clip(lit, 0, 255).astype(np.uint8))


def _draw_scene(style: dict, cond: dict, size, rng) -> Image.Image:
    """One street scene, painted back to front: sky, far background, ground, buildings, then the
    trees, poles, lamps, vehicles and people sorted by depth, and finally overhead wires."""
    p = _Painter(size, style, cond, rng)
    lay = _layout(style, cond, rng)
    _draw_background(p, style, cond, rng)
    _draw_ground(p, lay, style, cond, rng)
    buildings = _plan_buildings(lay, style, rng)
    _draw_shadows(p, buildings, cond)
    for building in sorted(buildings, key=lambda b: -b["z0"]):
        _draw_building(p, building, style, cond, rng)
    if cond["scene"] == "highway":
        _draw_highway_furniture(p, lay, style, rng)
    items, wires = [], []  # items: (depth, draw function, its arguments)
    _plan_trees(items, lay, style, cond, rng)
    _plan_poles(items, wires, lay, style, rng)
    _plan_lamps(items, lay, style, rng)
    _plan_traffic(items, lay, style, cond, rng)
    _plan_pedestrians(items, lay, style, cond, rng)
    for _, draw, kwargs in sorted(items, key=lambda item: -item[0]):
        draw(p, rng=rng, **kwargs)
    for wire in wires:
        p.line(wire, (24, 24, 26))
    if cond["night"] and cond["view"] != "Backward":
        p.headlight_beam()
    return p.finish()


def _layout(style, cond, rng) -> dict:
    """Lanes, kerbs and building lines in metres; the camera sits in one of its own lanes."""
    scene = cond["scene"]
    highway = scene == "highway"
    lane = rng.uniform(*style["lane_width"]) * (1.1 if highway else 1)
    lanes = int(rng.integers(2, 5)) if highway else 1
    if scene == "city_centre":
        lanes = int(rng.integers(1, 3))
    median = rng.uniform(1.5, 6) if highway else 0.0
    shoulder = rng.uniform(1.5, 3.2) if highway else 0.0
    parking_chance = {"city_centre": 0.6, "suburban": 0.5}.get(scene, 0)
    parking = rng.uniform(2.0, 2.4) if rng.random() < parking_chance else 0.0
    centre = -(int(rng.integers(lanes)) + 0.5) * lane
    kerb = {1: centre + lanes * lane + shoulder + parking,
            -1: centre - median - lanes * lane - shoulder - parking}
    sidewalk = rng.uniform(*{"city_centre": (3, 6), "suburban": (1.5, 2.5), "park": (0, 2),
                             "highway": (0, 0)}[scene])
    bike = 0.0
    if style["bike_lane"] and scene in ("city_centre", "suburban") and rng.random() < 0.8:
        bike = 1.8
    return dict(lane=lane, lanes=lanes, centre=centre, median=median, left=kerb[-1],
                right=kerb[1], parking=parking, sidewalk=sidewalk, bike=bike, kerb=kerb,
                scene=scene,
                building_line={s: kerb[s] + s * (0.25 + bike + sidewalk) for s in (-1, 1)},
                tram=scene in ("city_centre", "suburban") and rng.random() < style["tram_wires"])


def _smooth_profile(rng, n, octaves=4):
    """A 1-D random skyline profile in [0, 1] (a sum of random sinusoids)."""
    t = np.linspace(0, 1, n)
    wave = sum(np.sin(2 * np.pi * (t * rng.uniform(1, 3) * 2 ** k + rng.uniform())) / 2 ** k
               for k in range(octaves))
    return (wave - wave.min()) / (np.ptp(wave) + 1e-9)


def _draw_background(p, style, cond, rng):
    """Distant hills, a city skyline or a tree line just above the horizon."""
    xs = np.linspace(-0.1, 1.1, 40) * p.width
    hills = p.hy - (0.01 + 0.05 * _smooth_profile(rng, 40)) * p.height * rng.uniform(0.3, 1.5)
    p.draw.polygon(list(zip(xs, hills)) + [(xs[-1], p.hy + 2), (xs[0], p.hy + 2)],
                   fill=p.tone(_jitter(rng, (70, 92, 84)), 1400))
    if cond["scene"] == "city_centre" or rng.random() < 0.25:
        tallest = style["centre_storeys"][1] * 3.2 * 1.6
        for _ in range(int(rng.integers(10, 35))):
            x, z = rng.uniform(-900, 900), rng.uniform(500, 1300)
            w, h = rng.uniform(15, 60), rng.uniform(0.2, 1) * tallest
            p.poly([(x, 0, z), (x + w, 0, z), (x + w, h, z), (x, h, z)],
                   _jitter(rng, (120, 124, 130)), z)
    if cond["scene"] != "city_centre" and rng.random() < 0.6:
        z = rng.uniform(150, 300)
        tops = p.hy - p.px(1, z) * (6 + 10 * _smooth_profile(rng, 60, 5))
        xs = np.linspace(-0.1, 1.1, 60) * p.width
        snowy = cond["snow"] and rng.random() < 0.5
        leaves = _SNOW if snowy else _GREENS[_pick(rng, style["trees"])]
        p.draw.polygon(list(zip(xs, tops)) + [(xs[-1], p.hy + 2), (xs[0], p.hy + 2)],
                       fill=p.tone(_scale(leaves, 0.8), z))


def _draw_ground(p, lay, style, cond, rng):
    """Ground, road, kerbs, bike lanes, pavements, then the markings on the road."""
    scene, snow = lay["scene"], cond["snow"]
    grass = _jitter(rng, _SNOW if snow else style["grass"], 8)
    sidewalk = _jitter(rng, style["sidewalk"], 6)
    if snow:
        sidewalk = _mix(sidewalk, _SNOW, rng.uniform(0.3, 0.9))
    p.ground(-600, 600, Z_NEAR, 3000, sidewalk if scene == "city_centre" else grass)
    asphalt = _jitter(rng, style["asphalt"], 6)
    p.ground(lay["left"], lay["right"], Z_NEAR, 3000, asphalt)
    for _ in range(int(rng.integers(0, 6))):  # patched asphalt
        x, z = rng.uniform(lay["left"], lay["right"]), rng.uniform(3, 60)
        w, length = rng.uniform(0.5, 3), rng.uniform(1, 8)
        p.poly([(x, 0, z), (x + w, 0, z), (x + w, 0, z + length), (x, 0, z + length)],
               _scale(asphalt, rng.uniform(0.75, 1.2)))
    if lay["median"]:
        p.ground(lay["centre"] - lay["median"], lay["centre"], Z_NEAR, 3000,
                 grass if rng.random() < 0.5 else (150, 150, 146))
    for s in (-1, 1):
        x = lay["kerb"][s]
        if snow:
            p.ground(x - s * 0.8, x, Z_NEAR, 3000, _mix(asphalt, _SNOW, 0.7))
        if scene == "highway":
            continue
        p.ground(x, x + s * 0.25, Z_NEAR, 3000, _jitter(rng, style["kerb"], 5))
        x += s * 0.25
        if lay["bike"]:
            p.ground(x, x + s * lay["bike"], Z_NEAR, 3000, style["bike_lane"])
            x += s * lay["bike"]
        if lay["sidewalk"]:
            p.ground(x, x + s * lay["sidewalk"], Z_NEAR, 3000, sidewalk)
    _draw_markings(p, lay, style, cond, rng)


def _draw_markings(p, lay, style, cond, rng):
    """Centre line (colour and pattern per city), lane lines, edge lines, tram rails, crossings."""
    wear = rng.uniform(0.75, 1.0) * (0.6 if cond["snow"] else 1)
    white = _mix(_WHITE, style["asphalt"], 1 - wear)
    colour, pattern = style["centre_line"]
    colour = _mix(colour, style["asphalt"], 1 - wear)
    c, lane = lay["centre"], lay["lane"]
    far_side = c - lay["median"]
    if lay["median"]:
        p.stripe(c + 0.25, 0.15, colour)
        p.stripe(far_side - 0.25, 0.15, colour)
        p.stripe(c + lay["lanes"] * lane, 0.15, white)
        p.stripe(far_side - lay["lanes"] * lane, 0.15, white)
    elif pattern == "double":
        p.stripe(c - 0.14, 0.1, colour)
        p.stripe(c + 0.14, 0.1, colour)
    else:
        p.stripe(c, 0.12, colour, dash=(3, 6) if pattern == "dashed" else None)
    for i in range(1, lay["lanes"]):
        p.stripe(c + i * lane, 0.12, white, dash=(3, 9))
        p.stripe(far_side - i * lane, 0.12, white, dash=(3, 9))
    if lay["scene"] in ("city_centre", "suburban"):
        if style["edge_line"]:
            edge = _mix(style["edge_line"], style["asphalt"], 1 - wear)
            for s in (-1, 1):
                p.stripe(lay["kerb"][s] - s * 0.25, 0.08, edge)
                p.stripe(lay["kerb"][s] - s * 0.42, 0.08, edge)
        elif lay["parking"]:
            for s in (-1, 1):
                p.stripe(lay["kerb"][s] - s * lay["parking"], 0.1, white)
    if lay["tram"]:
        for x in (c + lane / 2, c - lane / 2):
            for rail in (-0.72, 0.72):
                p.stripe(x + rail, 0.07, (128, 128, 134))
    if lay["scene"] == "city_centre" and rng.random() < 0.4:  # a zebra crossing
        z = rng.uniform(8, 40)
        for x in np.arange(lay["left"] + 0.5, lay["right"] - 0.5, 1.0):
            p.poly([(x, 0, z), (x + 0.5, 0, z), (x + 0.5, 0, z + 3), (x, 0, z + 3)], white)


_SCENE_BUILDINGS = {  # length (m), chance of a gap after each, gap (m), setback (m), storeys
    "city_centre": ((6, 22), 0.06, (3, 8), (0, 0.5), "centre_storeys"),
    "suburban": ((7, 13), 0.9, (4, 12), (4, 12), "suburb_storeys"),
    "highway": ((15, 40), 0.8, (20, 80), (20, 60), "suburb_storeys"),
    "park": ((10, 25), 0.85, (30, 90), (30, 70), "suburb_storeys"),
}
_SIGN_COLOURS = [(200, 30, 30), (240, 200, 30), (30, 90, 180), (240, 240, 240), (30, 150, 80),
                 (230, 110, 30)]


def _plan_buildings(lay, style, rng) -> list[dict]:
    """Blocks along both sides: continuous facades in the centre, houses with gaps elsewhere."""
    length, gap_rate, gaps, setbacks, storeys = _SCENE_BUILDINGS[lay["scene"]]
    buildings = []
    for s in (-1, 1):
        if lay["scene"] in ("highway", "park") and rng.random() < 0.5:
            continue
        z = rng.uniform(-10, 3)
        while z < (220 if lay["scene"] == "city_centre" else 160):
            z1 = z + rng.uniform(*length)
            buildings.append(dict(
                side=s, x=lay["building_line"][s] + s * rng.uniform(*setbacks), z0=z, z1=z1,
                storeys=int(rng.integers(style[storeys][0], style[storeys][1] + 1)),
                floor=rng.uniform(2.9, 3.4), depth=rng.uniform(8, 20),
                facade=_jitter(rng, _choose(rng, style["facades"]), 10),
                roof=_pick(rng, style["roofs"]),
                roof_colour=_jitter(rng, _choose(rng, style["roof_colours"]), 8),
                shop=lay["scene"] == "city_centre" and rng.random() < 0.8))
            z = z1 + (rng.uniform(*gaps) if rng.random() < gap_rate else 0)
    return buildings


def _draw_shadows(p, buildings, cond):
    """On sunny days the buildings on the sun's side shade the pavement and part of the road."""
    strength = 0 if cond["night"] else {"clear": 0.45, "cloudy": 0.25}.get(cond["weather"], 0)
    if not strength:
        return
    mask = Image.new("L", p.img.size)
    draw = ImageDraw.Draw(mask)
    for b in buildings:
        if b["side"] == cond["sun_side"]:
            reach = min(b["storeys"] * b["floor"] * 0.6, 14) * b["side"]
            corners = [(b["x"], 0, b["z0"]), (b["x"] - reach, 0, b["z0"] + 2),
                       (b["x"] - reach, 0, b["z1"] + 2), (b["x"], 0, b["z1"])]
            draw.polygon([p.at(*c) for c in corners], fill=255)
    shade = 1 - strength * np.asarray(mask, np.float32)[..., None] / 255
    p.img.paste(Image.fromarray((np.asarray(p.img, np.float32) * shade).astype(np.uint8)))


def _draw_building(p, b, style, cond, rng):
    """A block along the street: its near end face, street facade, roof, windows, shopfront."""
    s, x, z0, z1 = b["side"], b["x"], b["z0"], b["z1"]
    if z1 <= Z_NEAR:
        return
    height = b["storeys"] * b["floor"]
    in_shade = s == cond["sun_side"]
    sunlit = {"clear": 0.72, "cloudy": 0.88}.get(cond["weather"], 1.0) if in_shade else 1.0
    facade = _scale(b["facade"], sunlit)
    roof_colour = _SNOW if cond["snow"] else b["roof_colour"]
    zn, xd = max(z0, Z_NEAR), x + s * b["depth"]
    rise = rng.uniform(2.5, 4.5)
    if z0 >= Z_NEAR:
        p.poly([(x, 0, z0), (xd, 0, z0), (xd, height, z0), (x, height, z0)], _scale(facade, 0.85),
               z0)
        if b["roof"] in ("pitched", "mansard"):
            p.poly([(x, height, z0), (xd, height, z0), ((x + xd) / 2, height + rise, z0)],
                   _scale(facade, 0.8), z0)
    p.poly([(x, 0, zn), (x, 0, z1), (x, height, z1), (x, height, zn)], facade, (zn + z1) / 2)
    if b["roof"] == "pitched":
        p.poly([(x, height, zn), (x, height, z1), (x + s * 4, height + rise, z1),
                (x + s * 4, height + rise, zn)], roof_colour)
    elif b["roof"] == "mansard":
        p.poly([(x, height, zn), (x, height, z1), (x + s * 1.2, height + 2.8, z1),
                (x + s * 1.2, height + 2.8, zn)], roof_colour)
        _draw_windows(p, b, x + s * 0.6, height + 0.7, 1, 1.4, b["floor"], rng, style, cond,
                      spacing_scale=2.5)  # dormers
    elif b["roof"] == "gable":  # a row of narrow houses, each with its gable to the street
        edges = np.linspace(z0, z1, max(1, round((z1 - z0) / rng.uniform(4.5, 7))) + 1)
        for za, zb in zip(edges[:-1], edges[1:]):
            if zb <= Z_NEAR:
                continue
            w, peak = zb - za, height + rise
            outline = [(za, height), (za + 0.25 * w, height + 0.55 * rise), (za + 0.35 * w, peak),
                       (zb - 0.35 * w, peak), (zb - 0.25 * w, height + 0.55 * rise), (zb, height)]
            p.poly([(x, y, max(z, Z_NEAR)) for z, y in outline], _jitter(rng, facade, 12),
                   (za + zb) / 2)
    else:  # flat, with a cornice
        p.poly([(x - s * 0.3, height - 0.5, zn), (x - s * 0.3, height - 0.5, z1),
                (x, height, z1), (x, height, zn)], _scale(style["trim"], 0.9 * sunlit))
    ground_floor_windows = 0 if b["shop"] else 1
    _draw_windows(p, b, x, (1 - ground_floor_windows) * b["floor"] + 0.9,
                  b["storeys"] - 1 + ground_floor_windows, b["floor"] * 0.45, b["floor"], rng,
                  style, cond)
    if b["shop"]:
        _draw_shopfront(p, b, rng, style, cond)
    if rng.random() < style["graffiti"]:
        _draw_graffiti(p, b, rng)


def _draw_windows(p, b, x, y0, rows, window_height, floor, rng, style, cond, spacing_scale=1.0):
    """A grid of windows on the facade plane x: glass by day (some framed), some lit at night."""
    length = b["z1"] - b["z0"]
    columns = max(1, int(length / (rng.uniform(*style["window_spacing"]) * spacing_scale)))
    half = length / columns * rng.uniform(0.2, 0.31)
    glass = _jitter(rng, style["glass"], 8)
    trim = style["trim"] if rng.random() < 0.5 else None
    lit_rate = 0.35 if cond["scene"] == "city_centre" else 0.25
    for centre in b["z0"] + (np.arange(columns) + 0.5) * length / columns:
        za, zb = centre - half, centre + half
        pixels_wide = abs(p.at(x, 0, za)[0] - p.at(x, 0, zb)[0])
        if za < Z_NEAR or pixels_wide < 0.4:
            continue
        for bottom in y0 + np.arange(rows) * floor:
            top = bottom + window_height
            quad = [p.at(x, bottom, za), p.at(x, bottom, zb), p.at(x, top, zb), p.at(x, top, za)]
            if trim is not None and pixels_wide > 4:
                p.draw.polygon(_grow(quad, 1.5), fill=p.tone(trim, za))
            if cond["night"] and rng.random() < lit_rate:
                warm = rng.random() < 0.7
                p.draw.polygon(quad, fill=_jitter(rng, (255, 214, 140) if warm else (220, 230, 255),
                                                  12))
            else:
                p.draw.polygon(quad, fill=p.tone(_scale(glass, rng.uniform(0.75, 1.35)), za))


def _grow(quad, pixels):
    """The quad enlarged by some pixels on every side (a window frame around the glass)."""
    cu, cv = sum(u for u, _ in quad) / 4, sum(v for _, v in quad) / 4
    return [(u + pixels * np.sign(u - cu), v + pixels * np.sign(v - cv)) for u, v in quad]


def _draw_shopfront(p, b, rng, style, cond):
    """Ground-floor glass with a sign band, and (where signs are dense) signs sticking out."""
    s, x, zn, z1 = b["side"], b["x"], max(b["z0"], Z_NEAR), b["z1"]
    p.poly([(x, 0.3, zn), (x, 0.3, z1), (x, 2.8, z1), (x, 2.8, zn)], (52, 58, 64))
    if rng.random() < style["signs"]:
        p.poly([(x, 2.9, zn), (x, 2.9, z1), (x, 3.6, z1), (x, 3.6, zn)],
               _choose(rng, _SIGN_COLOURS))
    if style["signs"] <= 0.6:
        return
    for z in np.arange(b["z0"] + rng.uniform(1, 6), z1, rng.uniform(5, 10)):
        if z < 2:
            continue
        bottom = rng.uniform(3.5, 6)
        top = bottom + rng.uniform(2, min(8, b["storeys"] * b["floor"] - bottom + 1))
        colour = _choose(rng, _SIGN_COLOURS)
        corners = [(x, bottom, z), (x - s * 0.9, bottom, z), (x - s * 0.9, top, z), (x, top, z)]
        if cond["night"]:  # lit from inside
            p.draw.polygon([p.at(*c) for c in corners], fill=colour)
            p.glow_draw.polygon([p.at(*c) for c in corners], fill=_scale(colour, 0.5))
        else:
            p.poly(corners, colour)


def _draw_graffiti(p, b, rng):
    """Bright tags and murals low on the wall."""
    x = b["x"] - b["side"] * 0.02
    for _ in range(int(rng.integers(1, 5))):
        z = rng.uniform(max(b["z0"], 2), max(b["z1"], 3))
        length, bottom, top = rng.uniform(1, 5), rng.uniform(0.2, 1), rng.uniform(1.4, 2.8)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        p.poly([(x, bottom, z), (x, bottom + rng.uniform(-0.3, 0.3), z + length),
                (x, top, z + length), (x, top + rng.uniform(-0.5, 0.5), z)], colour)


def _draw_highway_furniture(p, lay, style, rng):
    """Median barrier, guardrails, noise walls and sometimes an overhead sign gantry."""
    if lay["median"]:
        x = lay["centre"] - lay["median"] / 2
        p.poly([(x + 0.3, 0, Z_NEAR), (x + 0.3, 0, 800), (x + 0.15, 0.85, 800),
                (x + 0.15, 0.85, Z_NEAR)], (176, 174, 168), 30)
    for s in (-1, 1):
        x = lay["kerb"][s] + s * 0.6
        if rng.random() < 0.7:
            p.poly([(x, 0.5, Z_NEAR), (x, 0.5, 600), (x, 0.8, 600), (x, 0.8, Z_NEAR)],
                   (172, 174, 178), 25)
        if rng.random() < 0.3:
            wall_x, wall_h = x + s * rng.uniform(2, 5), rng.uniform(3, 5)
            colour = _choose(rng, [(176, 172, 162), (96, 130, 96), (130, 104, 84)])
            p.poly([(wall_x, 0, Z_NEAR), (wall_x, 0, 700), (wall_x, wall_h, 700),
                    (wall_x, wall_h, Z_NEAR)], colour, 40)
    if rng.random() < 0.45:
        z, left, right = rng.uniform(30, 90), lay["left"] - 1, lay["right"] + 1
        for x in (left, right):
            p.line([(x, 0, z), (x, 6.5, z)], (120, 122, 126), metres=0.35)
        p.poly([(left, 6.3, z), (right, 6.3, z), (right, 6.6, z), (left, 6.6, z)], (120, 122, 126))
        x0, x1 = lay["centre"] + 0.3, lay["right"] - 0.3
        for a, b in ((x0, (x0 + x1) / 2 - 0.2), ((x0 + x1) / 2 + 0.2, x1)):
            p.poly([(a, 6.6, z), (b, 6.6, z), (b, 8.8, z), (a, 8.8, z)],
                   _jitter(rng, style["gantry"], 6))
            for y in (7.3, 7.8, 8.3):  # lines of white lettering
                end = a + (b - a) * rng.uniform(0.4, 0.9)
                p.poly([(a + 0.4, y, z), (end, y, z), (end, y + 0.22, z), (a + 0.4, y + 0.22, z)],
                       (236, 236, 236))


_GREENS = {"deciduous": (72, 108, 48), "plane": (98, 134, 62), "birch": (122, 158, 72),
           "conifer": (34, 64, 42), "palm": (88, 120, 50), "eucalyptus": (112, 128, 98),
           "tropical": (42, 90, 40), "shrub": (110, 116, 70)}
_AUTUMN_LEAVES = [(196, 138, 42), (176, 88, 34), (208, 176, 64), (150, 120, 50)]
_DECIDUOUS = {"deciduous", "plane", "birch"}
_TREE_HEIGHTS = {"deciduous": (7, 14), "plane": (10, 18), "birch": (8, 14), "conifer": (8, 18),
                 "palm": (8, 16), "eucalyptus": (12, 22), "tropical": (6, 12), "shrub": (1, 2.2)}
_BARK = {"birch": (226, 224, 214), "plane": (168, 158, 128), "eucalyptus": (204, 196, 176),
         "palm": (122, 102, 78)}


def _plan_trees(items, lay, style, cond, rng):
    scene = lay["scene"]
    density = style["tree_density"] * {"park": 3, "suburban": 1.2, "city_centre": 0.7,
                                       "highway": 0.6}[scene]
    offsets = {"city_centre": (0.8, 1.2), "suburban": (lay["sidewalk"] + 1, lay["sidewalk"] + 5),
               "park": (1.5, 30), "highway": (5, 35)}[scene]  # from the kerb outwards
    spacing = 14 / density
    for s in (-1, 1):
        if scene == "city_centre" and rng.random() < 0.4:
            continue
        z = rng.uniform(2, spacing)
        while z < 140:
            kind = _pick(rng, style["trees"])
            items.append((z, _draw_tree, dict(
                kind=kind, x=lay["kerb"][s] + s * rng.uniform(*offsets), z=z,
                height=rng.uniform(*_TREE_HEIGHTS[kind]), cond=cond)))
            z += spacing * rng.uniform(0.5, 1.5)


def _draw_tree(p, rng, kind, x, z, height, cond):
    """A tree whose silhouette says its kind: palm, conifer, birch, plane, eucalyptus, ..."""
    green = _jitter(rng, _GREENS[kind], 10)
    if cond["autumn"] and kind in _DECIDUOUS and rng.random() < 0.7:
        green = _choose(rng, _AUTUMN_LEAVES)
    bark = _BARK.get(kind, (84, 68, 54))
    if kind == "palm":
        lean = rng.uniform(-1.2, 1.2)
        top = (x + lean, height, z)
        p.line([(x, 0, z), (x + lean * 0.3, height * 0.5, z), top], bark, metres=0.35)
        fronds = np.linspace(0, 2 * np.pi, int(rng.integers(7, 11)), endpoint=False)
        for angle in fronds + rng.uniform(0, 1):
            dx, dy = 3.2 * math.cos(angle), 1.2 * math.sin(angle)
            p.line([top, (x + lean + dx * 0.55, height + 0.7 + dy * 0.5, z),
                    (x + lean + dx, height - 1.6 + dy, z)], _jitter(rng, green, 12), metres=0.3)
    elif kind == "shrub":
        for _ in range(3):
            p.blob(x + rng.uniform(-0.8, 0.8), height * 0.5, z, height * 0.7, height * 0.5,
                   _jitter(rng, green, 10))
    elif kind == "conifer":
        p.line([(x, 0, z), (x, height * 0.3, z)], bark, metres=0.35)
        for tier in range(3):
            base, width = height * (0.15 + 0.26 * tier), height * 0.22 * (1 - 0.25 * tier)
            apex = (x, base + height * 0.42, z)
            p.poly([(x - width, base, z), (x + width, base, z), apex],
                   _scale(green, 1 - 0.08 * tier), z)
            if cond["snow"]:
                snow_line = base + height * 0.2
                p.poly([(x - width / 2, snow_line, z), (x + width / 2, snow_line, z), apex],
                       _SNOW, z)
    else:
        _draw_broadleaf(p, rng, kind, x, z, height, cond, green, bark)


def _draw_broadleaf(p, rng, kind, x, z, height, cond, green, bark):
    """A trunk with a crown of leaf clusters, or bare branches in winter."""
    crown = height * {"birch": 0.17, "tropical": 0.42, "eucalyptus": 0.26}.get(kind, 0.3)
    trunk_top = height - crown * 1.4
    p.line([(x, 0, z), (x, trunk_top + crown * 0.5, z)], bark,
           metres=0.3 if kind == "birch" else 0.45)
    if cond["leafless"] and kind in _DECIDUOUS:
        for _ in range(int(rng.integers(5, 9))):
            end = (x + rng.uniform(-1, 1) * crown, trunk_top + rng.uniform(0.3, 1.4) * crown, z)
            middle = (x + (end[0] - x) * 0.4, trunk_top + (end[1] - trunk_top) * 0.3, z)
            p.line([(x, trunk_top * 0.8, z), middle, end], _scale(bark, 0.9), metres=0.12)
        return
    squash = 0.6 if kind == "tropical" else 1.0
    clusters = int(rng.integers(3, 5) if kind == "eucalyptus" else rng.integers(4, 8))
    for _ in range(clusters):
        r, leaves = crown * rng.uniform(0.45, 0.8), _jitter(rng, green, 14)
        ry = r * squash * (1.6 if kind == "birch" else 1)
        cx = x + rng.uniform(-0.6, 0.6) * crown
        cy = height - crown + rng.uniform(-0.5, 0.5) * crown * squash
        p.blob(cx, cy, z, r, ry, leaves)
        p.blob(cx - 0.2 * r, cy + 0.25 * ry, z, 0.55 * r, 0.55 * ry, _scale(leaves, 1.18))


def _plan_poles(items, wires, lay, style, rng):
    """Utility poles with sagging wires between them (dense in Tokyo), and tram catenary."""
    if lay["scene"] != "highway" and rng.random() < style["poles"]:
        count = int(rng.integers(style["wires"][0], style["wires"][1] + 1))
        sides = (-1, 1) if count >= 6 or rng.random() < 0.3 else (int(rng.choice([-1, 1])),)
        tops = {}
        for s in sides:
            x, height = lay["kerb"][s] + s * 0.35, rng.uniform(9, 11)
            tops[s] = [(x, height, Z_NEAR + 0.3)]  # wires come in from above the camera
            for z in np.arange(rng.uniform(4, 15), 220, rng.uniform(25, 40)):
                items.append((z, _draw_pole, dict(x=x, z=z, height=height,
                                                  colour=style["pole_colour"])))
                tops[s].append((x, height, z))
            for a, b in zip(tops[s][:-1], tops[s][1:]):
                for i in range(count):
                    dx, dy = 0.45 * ((i % 3) - 1), -0.5 - 0.35 * (i // 3)
                    sag = ((a[0] + b[0]) / 2 + dx, (a[1] + b[1]) / 2 + dy - 0.5, (a[2] + b[2]) / 2)
                    wires.append([(a[0] + dx, a[1] + dy, a[2]), sag, (b[0] + dx, b[1] + dy, b[2])])
        if len(sides) == 2:  # wires across the street
            for a in tops[1][1:]:
                if rng.random() < 0.35:
                    b = tops[-1][int(rng.integers(1, len(tops[-1])))]
                    wires.append([a, ((a[0] + b[0]) / 2, a[1] - 0.8, (a[2] + b[2]) / 2), b])
    if lay["tram"]:
        c, lane = lay["centre"], lay["lane"]
        for x in (c + lane / 2, c - lane / 2):
            wires.append([(x, 5.8, Z_NEAR + 0.1), (x, 5.8, 20), (x, 5.8, 400)])
        for z in np.arange(rng.uniform(5, 20), 200, 30):
            wires.append([(lay["left"] - 0.4, 6.4, z), (c, 6.1, z), (lay["right"] + 0.4, 6.4, z)])
            for s in (-1, 1):
                items.append((z, _draw_pole, dict(x=lay["kerb"][s] + s * 0.4, z=z, height=7.0,
                                                  colour=(90, 96, 92))))


def _draw_pole(p, rng, x, z, height, colour):
    p.line([(x, 0, z), (x, height, z)], colour, metres=0.28)
    p.line([(x - 0.9, height - 0.4, z), (x + 0.9, height - 0.4, z)], colour, metres=0.12)


def _plan_lamps(items, lay, style, rng):
    """Street lamps: cobra-head arms, short lantern posts, or lamps hung over the road on wires."""
    kind = "arm" if lay["scene"] == "highway" else _pick(rng, style["lamps"])
    if lay["scene"] == "park" and rng.random() < 0.5:
        return
    light = _jitter(rng, style["lamp_light"], 6)
    for i, z in enumerate(np.arange(rng.uniform(4, 20), 200, rng.uniform(25, 40))):
        for s in (-1, 1) if kind == "post" else (1 - 2 * (i % 2),):
            items.append((z, _draw_lamp, dict(kind=kind, s=s, z=z, lay=lay, light=light)))


def _draw_lamp(p, rng, kind, s, z, lay, light):
    x = lay["kerb"][s] + s * 0.5
    if kind == "catenary":
        left, right = lay["left"] - 0.5, lay["right"] + 0.5
        middle = (left + right) / 2
        p.line([(left, 7.2, z), (middle, 6.9, z), (right, 7.2, z)], (30, 30, 32))
        p.blob(middle, 6.6, z, 0.35, 0.2, (70, 70, 74))
        p.light_source(middle, 6.45, z, 0.18, light)
        p.light_pool(middle, z, 6, light)
    elif kind == "post":
        p.line([(x, 0, z), (x, 4.0, z)], (34, 40, 38), metres=0.16)
        p.blob(x, 4.2, z, 0.22, 0.3, (34, 40, 38))
        p.light_source(x, 4.2, z, 0.14, light)
        p.light_pool(x, z, 3, light)
    else:
        head = x - s * 2.2
        p.line([(x, 0, z), (x, 8.2, z), (head, 8.0, z)], (138, 140, 144), metres=0.18)
        p.blob(head, 7.9, z, 0.35, 0.12, (110, 112, 116))
        p.light_source(head, 7.8, z, 0.2, light)
        p.light_pool(head, z, 6, light)


_VEHICLE_SIZES = {  # width, height, length (m)
    "car": (1.8, 1.45, 4.4), "suv": (1.9, 1.75, 4.7), "van": (1.95, 2.2, 5.0),
    "kei": (1.48, 1.75, 3.4), "cab": (1.8, 1.8, 4.5), "bus": (2.5, 4.2, 11),
    "tram": (2.6, 3.4, 25), "pickup": (2.0, 1.85, 5.6), "tuktuk": (1.4, 1.7, 2.7),
    "truck": (2.5, 3.6, 10)}
_BOXY = {"van", "bus", "tram", "truck", "tuktuk"}


def _plan_traffic(items, lay, style, cond, rng):
    """Vehicles ahead in our lanes (seen from behind), oncoming ones (seen from the front) and
    parked ones; looking backward, the facings swap."""
    density = style["traffic"] * {"highway": 0.9, "city_centre": 1.0, "suburban": 0.35,
                                  "park": 0.3}[lay["scene"]]
    fleet = [v for v in style["vehicles"] if v[0] != "tram" or lay["tram"]]
    if lay["scene"] == "highway":
        fleet = fleet + [("truck", (236, 236, 236), 2), ("truck", (60, 90, 140), 1)]
    weights = np.array([weight for _, _, weight in fleet], float)
    flip = cond["view"] == "Backward"
    c, lane = lay["centre"], lay["lane"]
    lanes = [(c + (i + 0.5) * lane, not flip, False) for i in range(lay["lanes"])]
    lanes += [(c - lay["median"] - (i + 0.5) * lane, flip, False) for i in range(lay["lanes"])]
    if lay["parking"]:
        lanes += [(lay["kerb"][s] - s * lay["parking"] / 2, (s > 0) != flip, True)
                  for s in (-1, 1)]
    for x, rear, parked in lanes:
        count = rng.poisson(12 * density if parked else 2.5 * density)
        last = -1e9
        for z in np.sort(rng.uniform(3 if parked else 8, 90 if parked else 150, count)):
            kind, colour, _ = fleet[int(rng.choice(len(fleet), p=weights / weights.sum()))]
            if z - last < _VEHICLE_SIZES[kind][2] + 1.5:
                continue
            last = z
            items.append((z, _draw_vehicle, dict(kind=kind, colour=_jitter(rng, colour, 6),
                                                 x=x + rng.normal(0, 0.15), z=z, rear=rear,
                                                 night=cond["night"])))


def _draw_vehicle(p, rng, kind, colour, x, z, rear, night):
    """A box with wheels, glass and lights: tail lights seen from behind, headlights in front."""
    width, height, length = _VEHICLE_SIZES[kind]
    x0, x1, boxy = x - width / 2, x + width / 2, kind in _BOXY
    p.poly([(x0 - 0.15, 0, z), (x1 + 0.15, 0, z), (x1 + 0.15, 0, z + length),
            (x0 - 0.15, 0, z + length)], (26, 26, 28))  # shadow
    side = x0 if x0 > 0.2 else x1 if x1 < -0.2 else None  # the side facing the camera
    if side is not None:
        p.poly([(side, 0.25, z), (side, 0.25, z + length), (side, height * 0.9, z + length),
                (side, height * 0.9, z)], _scale(colour, 0.82))
        start, end = (z + 0.5, z + length - 0.5) if boxy else (z + 0.25 * length, z + 0.78 * length)
        p.poly([(side, height * 0.55, start), (side, height * 0.55, end),
                (side, height * 0.86, end), (side, height * 0.86, start)], (40, 46, 54))
        for wheel in (z + 0.18 * length, z + 0.82 * length):
            p.blob(side, 0.33, wheel, 0.05, 0.33, (18, 18, 18))
    inset = 0.12 * width
    if boxy:
        face = [(x0, 0.2, z), (x1, 0.2, z), (x1, height, z), (x0, height, z)]
        glass = [(x0 + inset, height * 0.5, z), (x1 - inset, height * 0.5, z),
                 (x1 - inset, height * 0.9, z), (x0 + inset, height * 0.9, z)]
    else:
        face = [(x0, 0.2, z), (x1, 0.2, z), (x1, height * 0.58, z), (x1 - 0.13 * width, height, z),
                (x0 + 0.13 * width, height, z), (x0, height * 0.58, z)]
        glass = [(x0 + inset, height * 0.62, z), (x1 - inset, height * 0.62, z),
                 (x1 - 1.5 * inset, height * 0.94, z), (x0 + 1.5 * inset, height * 0.94, z)]
    p.poly(face, colour, z)
    p.poly(glass, (38, 44, 52) if rear or boxy else (60, 70, 82), z)
    for wx in (x0 + 0.05, x1 - 0.33):
        p.poly([(wx, 0, z), (wx + 0.28, 0, z), (wx + 0.28, 0.3, z), (wx, 0.3, z)], (16, 16, 16), z)
    p.poly([(x0, 0.2, z), (x1, 0.2, z), (x1, 0.34, z), (x0, 0.34, z)], _scale(colour, 0.55), z)
    if kind == "cab":  # roof sign
        p.poly([(x - 0.3, height, z), (x + 0.3, height, z), (x + 0.3, height + 0.18, z),
                (x - 0.3, height + 0.18, z)], (250, 190, 40), z)
    lamp_y = height * (0.5 if rear else 0.36)
    for lx in (x0 + 0.2, x1 - 0.2):
        if night:
            p.light_source(lx, lamp_y, z, 0.1, (255, 40, 30) if rear else (255, 250, 228),
                           glow=4 if rear else 6)
        else:
            p.poly([(lx - 0.14, lamp_y - 0.08, z), (lx + 0.14, lamp_y - 0.08, z),
                    (lx + 0.14, lamp_y + 0.08, z), (lx - 0.14, lamp_y + 0.08, z)],
                   (200, 24, 24) if rear else (236, 236, 220), z)
    if night and not rear:
        p.light_pool(x, z - 4, 1.5, (255, 250, 228))


_CLOTHES = [(30, 30, 34), (60, 60, 70), (180, 40, 40), (40, 60, 120), (200, 200, 196),
            (120, 96, 70), (60, 100, 60)]


def _plan_pedestrians(items, lay, style, cond, rng):
    expected = style["pedestrians"] * {"city_centre": 10, "suburban": 1.5, "park": 1.5,
                                       "highway": 0}[lay["scene"]]
    for _ in range(rng.poisson(expected * (0.3 if cond["night"] else 1))):
        s = int(rng.choice([-1, 1]))
        across = rng.uniform(0.3, max(0.6, lay["sidewalk"] - 0.3))
        x, z = lay["kerb"][s] + s * (0.25 + lay["bike"] + across), rng.uniform(3, 70)
        items.append((z, _draw_person, dict(x=x, z=z, shirt=_choose(rng, _CLOTHES))))


def _draw_person(p, rng, x, z, shirt):
    p.poly([(x - 0.15, 0, z), (x + 0.15, 0, z), (x + 0.15, 0.85, z), (x - 0.15, 0.85, z)],
           (36, 38, 46), z)
    p.poly([(x - 0.22, 0.85, z), (x + 0.22, 0.85, z), (x + 0.2, 1.45, z), (x - 0.2, 1.45, z)],
           shirt, z)
    p.blob(x, 1.58, z, 0.11, 0.12, _jitter(rng, (190, 150, 120), 30))


# ------------------------------------------------------------------------------------- frames

def _frames(canvas: Image.Image, cond: dict, size, rng):
    """The sequence's frames: progressive zoom about the vanishing point (the car moving forward,
    or away when looking backward), camera shake, dashboard, sensor noise, blur and mirroring."""
    width, height = size
    canvas_w, canvas_h = canvas.size
    n = cond["length"]
    rate = min(1 + rng.uniform(0.01, 0.035), ZOOM_MARGIN ** (1 / max(1, n - 1)))
    vanishing_point = np.clip([cond["vp_x"] * canvas_w, cond["horizon"] * canvas_h], 0,
                              [canvas_w, canvas_h])
    tint = rng.uniform(0.9, 1.1) * (1 + rng.normal(0, 0.03, 3))  # exposure and white balance
    noise = rng.uniform(3.5, 6) if cond["night"] else rng.uniform(1.5, 3.5)
    blur = rng.uniform(0.25, 0.7)
    yy, xx = np.mgrid[-1:1:height * 1j, -1:1:width * 1j]
    vignette = (1 - rng.uniform(0, 0.25) * (xx ** 2 + yy ** 2) / 2)[..., None].astype(np.float32)
    dashboard = _dashboard_shape(rng) if cond["dashboard"] else None
    backward = cond["view"] == "Backward"
    for k in range(n):
        zoom = min(ZOOM_MARGIN, rate ** (n - 1 - k if backward else k))
        shake = rng.normal(0, 0.004, 2) * [canvas_w, canvas_h]
        left, top = vanishing_point * (1 - 1 / zoom) + shake
        left = min(max(left, 0), canvas_w * (1 - 1 / zoom))
        top = min(max(top, 0), canvas_h * (1 - 1 / zoom))
        box = (left, top, left + canvas_w / zoom, top + canvas_h / zoom)
        if cond["pano"]:  # forward and backward views side by side
            half = width // 2
            frame = Image.new("RGB", size)
            frame.paste(canvas.resize((half, height), Image.BILINEAR, box=box), (0, 0))
            behind = canvas.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            frame.paste(behind.resize((width - half, height), Image.BILINEAR), (half, 0))
        else:
            frame = canvas.resize(size, Image.BILINEAR, box=box)
        if dashboard:
            _draw_dashboard(frame, dashboard)
        pixels = np.asarray(frame, np.float32) * tint * vignette
        pixels += rng.standard_normal(pixels.shape, dtype=np.float32) * noise
        frame = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        frame = frame.filter(ImageFilter.GaussianBlur(blur))
        yield frame.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if cond["mirror"] else frame


def _dashboard_shape(rng) -> dict:
    grey = rng.uniform(18, 46)
    return dict(top=1 - rng.uniform(0.2, 0.3), bulge=rng.uniform(0.02, 0.07),
                colour=tuple(int(grey + rng.normal(0, 4)) for _ in range(3)),
                wheel=rng.random() < 0.6, mirror=rng.random() < 0.5)


def _draw_dashboard(frame: Image.Image, dash: dict):
    """A dark dashboard across the bottom; the steering wheel is on the driver's side (the left,
    before a left-hand city's frame is mirrored), with air vents and a rear-view mirror."""
    width, height = frame.size
    draw = ImageDraw.Draw(frame)
    edge = [(x, height * (dash["top"] + dash["bulge"] * (2 * x / width - 1) ** 2))
            for x in np.linspace(0, width, 17)]
    draw.polygon(edge + [(width, height), (0, height)], fill=dash["colour"])
    draw.line(edge, fill=_scale(dash["colour"], 1.8), width=max(1, height // 120))
    if dash["wheel"]:
        r, cx, cy = 0.26 * width, 0.27 * width, height * (dash["top"] + 0.32)
        draw.arc((cx - r, cy - r, cx + r, cy + r), 195, 345, fill=(14, 14, 14),
                 width=max(2, height // 25))
    for i in range(3):
        x = width * (0.46 + 0.04 * i)
        draw.rectangle((x, height * (dash["top"] + 0.06), x + width * 0.025,
                        height * (dash["top"] + 0.09)), fill=(10, 10, 10))
    if dash["mirror"]:
        draw.rounded_rectangle((width * 0.42, -height * 0.02, width * 0.58, height * 0.07),
                               radius=height * 0.02, fill=(22, 22, 24))
