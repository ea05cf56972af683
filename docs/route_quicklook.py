"""Draw docs/route_map_fields_x2.png: the LR scene with its route map over it.

Made with (the synthetic fields scene of geosr bench, its clean x2 LR, a routed run)::

    python -c "from pathlib import Path; from geosr.benchmark import synthetic_fields_scene as s; s(Path(\"f.tif\"), 4096)"
    python -c "from geosr.reference_scene import write_degraded as w; w(\"f.tif\", \"lr.tif\", 2, \"clean\")"
    geosr upscale lr.tif out.tif --scale 2 --route-map route.tif
    python docs/route_quicklook.py lr.tif route.tif docs/route_map_fields_x2.png 800
"""
import sys

import rasterio
from PIL import Image, ImageDraw


def main(scene: str, route_map: str, out: str, side: int) -> None:
    with rasterio.open(scene) as ds:
        img = ds.read([1, 2, 3]).transpose(1, 2, 0)
        pixel = ds.transform.a, abs(ds.transform.e)
    with rasterio.open(route_map) as m:
        grid = m.read()
        core_w, core_h = m.transform.a / pixel[0], abs(m.transform.e) / pixel[1]
    f = side / img.shape[1]
    pic = Image.fromarray(img).resize((side, int(img.shape[0] * f)), Image.LANCZOS).convert("RGBA")
    over = Image.new("RGBA", pic.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(over)
    for r in range(grid.shape[1]):
        for c in range(grid.shape[2]):
            x0, y0 = c * core_w * f, r * core_h * f
            box = [x0, y0, x0 + core_w * f - 1, y0 + core_h * f - 1]
            if grid[2, r, c] == 0:  # band 3, "model": 0 where the tile went to the cheap path
                draw.rectangle(box, fill=(255, 0, 255, 120))
            draw.rectangle(box, outline=(255, 255, 255, 200))
            draw.text((x0 + 3, y0 + 2), f"{grid[0, r, c]:.1f}", fill=(255, 255, 255, 255))
    sheet = Image.new("RGB", (pic.width, pic.height + 18), "white")
    sheet.paste(Image.alpha_composite(pic, over).convert("RGB"), (0, 0))
    ImageDraw.Draw(sheet).text((4, pic.height + 3), "tinted magenta: tile routed to the cheap path (geosr-tiny-fast-xS); "
                               "number: tile texture (DN per input px); white lines: tile cores", fill="black")
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
