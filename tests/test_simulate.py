import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from pairsr.grid import interpolate
from pairsr.simulate import save_pair, simulate_pair, true_lr_coords


@pytest.fixture(scope="module")
def specimen():
    rng = np.random.default_rng(7)
    tex = ndi.gaussian_filter(rng.standard_normal((420, 520)), 2.0)
    return ((tex - tex.min()) / np.ptp(tex)).astype(np.float32)


@pytest.fixture(scope="module")
def pair(specimen):
    return simulate_pair(specimen, seed=3, max_rotation_deg=2.0)


def _ncc(a, b, smooth=1.0):
    """Normalised cross-correlation after a light blur that averages the scans' shot noise."""
    a, b = ndi.gaussian_filter(a, smooth), ndi.gaussian_filter(b, smooth)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_shapes_and_geometry(pair):
    t = pair.truth
    h, w = pair.lr.shape
    assert pair.gt.shape == (2 * h, 2 * w)
    assert pair.hr.shape == tuple(t["hr_shape"])
    # ~25 % of the field at 2x density: the HR is about as many pixels as the LR.
    assert abs(pair.hr.size / pair.lr.size - 1.0) < 0.05
    assert abs(t["zoom"] - 2.0) < 0.02
    assert abs(t["rotation_deg"]) <= 2.0 + 1e-6
    m = np.asarray(t["matrix"])
    assert np.allclose(m / np.sqrt(abs(np.linalg.det(m))), m @ np.linalg.inv(m) @ m / np.sqrt(
        abs(np.linalg.det(m))))
    # The footprint lies inside the LR field.
    lr_of_hr = true_lr_coords(t)
    assert lr_of_hr[0].min() > 0 and lr_of_hr[0].max() < h - 1
    assert lr_of_hr[1].min() > 0 and lr_of_hr[1].max() < w - 1


def test_truth_mapping_reproduces_hr_better_than_wrong_mappings(pair):
    """LR resampled through the truth matches the HR scan far better than a shifted mapping."""
    lr = pair.lr.astype(np.float32)
    hr = pair.hr.astype(np.float32)
    exact = true_lr_coords(pair.truth)
    good = _ncc(interpolate(lr, exact), hr)
    assert good > 0.5
    # The truth is the correlation peak: wrong mappings score lower, the further off the lower.
    for direction in ([1.0, 0.0], [0.0, 1.0], [-0.7, 0.7]):
        scores = [
            _ncc(interpolate(lr, exact + d * np.array(direction)[:, None, None]), hr)
            for d in (0.25, 0.5, 1.0)
        ]
        assert good > scores[0] > scores[1] > scores[2], (direction, good, scores)
        assert good - scores[2] > 0.05
    # The affine fit is the global part: residual is small but the local field is real.
    m, off = np.asarray(pair.truth["matrix"]), np.asarray(pair.truth["offset"])
    rows, cols = np.indices(hr.shape, dtype=float)
    affine = np.tensordot(m, np.stack([rows, cols]), axes=1) + off[:, None, None]
    resid = np.sqrt(((affine - exact) ** 2).sum(0))
    assert 0.01 < resid.mean() < 1.5
    assert _ncc(interpolate(lr, affine), hr) > good - 0.05


def test_scans_are_independent_physical_acquisitions(pair):
    t = pair.truth
    lr_s, hr_s = t["lr_scan"], t["hr_scan"]
    for key in ("dose", "gain", "gamma", "offset"):
        assert lr_s[key] != hr_s[key]
    assert not np.allclose(lr_s["drift"], 0) and not np.allclose(hr_s["drift"], 0)


def test_gt_is_noise_free_hr_rendering_of_whole_field(pair):
    gt = pair.gt
    assert gt.dtype == np.float32 and 0.0 <= gt.min() and gt.max() <= 1.0
    # Area-mean of the SR-grid truth lines up with the LR scan (up to drift and blur).
    binned = gt.reshape(gt.shape[0] // 2, 2, gt.shape[1] // 2, 2).mean((1, 3))
    assert _ncc(binned, pair.lr.astype(np.float32)) > 0.7
    # Noise-free: much smoother than the LR scan at the pixel level.
    lap = lambda x: np.std(ndi.laplace(x.astype(np.float64)))  # noqa: E731
    assert lap(binned) < 0.5 * lap(pair.lr / 255.0)


def test_hr_clean_is_the_hr_scan_without_its_noise(specimen):
    # Linear detector (gamma 1): hr = gain * (counts / dose + read) + offset, so the residual
    # against hr_clean, standardised by the model's own variance, is mean 0 and std 1.
    p = simulate_pair(specimen, seed=5, lr_shape=(96, 128), hr_gamma=1.0, hr_dose=20.0)
    scan, clean = p.truth["hr_scan"], p.hr_clean
    assert clean.shape == p.hr.shape and clean.dtype == np.float32
    signal = (clean - scan["offset"]) / scan["gain"]
    var = scan["gain"] ** 2 * (signal / scan["dose"] + scan["read_noise"] ** 2) + 1 / (12 * 255**2)
    inside = (clean > 0.08) & (clean < 0.9)  # clear of the uint8 range's clipping
    z = ((p.hr / 255.0 - clean) / np.sqrt(var))[inside]
    assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.1
    # Negative control: another scan's noise-free image is not this scan's expectation.
    other = simulate_pair(specimen, seed=6, lr_shape=(96, 128), hr_gamma=1.0, hr_dose=20.0)
    assert other.hr.shape == p.hr.shape
    assert (((p.hr / 255.0 - other.hr_clean) / np.sqrt(var))[inside]).std() > 1.3


def test_seeded_and_deterministic(specimen):
    a = simulate_pair(specimen, seed=11, lr_shape=(96, 128))
    b = simulate_pair(specimen, seed=11, lr_shape=(96, 128))
    c = simulate_pair(specimen, seed=12, lr_shape=(96, 128))
    assert np.array_equal(a.lr, b.lr) and np.array_equal(a.hr, b.hr) and a.truth == b.truth
    assert not np.array_equal(a.lr, c.lr)


def test_builtin_specimen_and_save(tmp_path):
    p = simulate_pair(seed=0, lr_shape=(120, 160))
    assert p.lr.shape == (120, 160) and p.lr.std() > 5
    save_pair(p, tmp_path / "pair")
    truth = json.loads((tmp_path / "pair" / "truth.json").read_text())
    assert truth["matrix"] == p.truth["matrix"]
    with pytest.raises(FileExistsError, match=r"lr\.tif"):
        save_pair(p, tmp_path / "pair")


def test_specimen_too_small_is_an_error(specimen):
    with pytest.raises(ValueError, match="covers at most"):
        simulate_pair(specimen, lr_shape=(1000, 1000))


def _bin(gt: np.ndarray, z: int) -> np.ndarray:
    return gt.reshape(gt.shape[0] // z, z, gt.shape[1] // z, z).mean((1, 3))


@pytest.mark.parametrize("zoom", [3, 4])
def test_zoom_3_and_4_pairs_and_gt_grid(zoom, tmp_path):
    p = simulate_pair(lr_shape=(64, 80), seed=zoom, zoom=zoom)
    t = p.truth
    assert p.gt.shape == (64 * zoom, 80 * zoom)
    assert p.hr.shape == (round(32 * zoom), round(40 * zoom))  # 25 % of the field at zoom× density
    # The affine truth includes the scans' drift, which is large against so small a field.
    assert abs(t["zoom"] / zoom - 1) < 0.05
    # The SR-grid truth, binned back to LR pixels, lines up with the LR scan.
    assert _ncc(_bin(p.gt, zoom), p.lr.astype(np.float32)) > 0.7
    # The pixel sizes written with the images give the zoom back, and gt is on the SR grid.
    from pairsr.io import read_image

    save_pair(p, tmp_path)
    px = {n: read_image(tmp_path / f"{n}.tif").attrs["pixel_size_nm"] for n in ("lr", "hr", "gt")}
    assert round(px["lr"] / px["hr"]) == zoom and abs(px["lr"] / px["hr"] / zoom - 1) < 0.006
    assert px["gt"] == pytest.approx(px["lr"] / zoom)


def test_explicit_keywords_change_only_what_they_name():
    base = simulate_pair(lr_shape=(80, 100), seed=4)
    other = simulate_pair(lr_shape=(80, 100), seed=4, rotation_deg=-6.5, hr_dose=3.0,
                          hr_gamma=1.6)
    assert other.truth["hr_scan"]["rotation_deg"] == -6.5
    # The LR scan is untouched by the HR's keywords; the HR follows them.
    assert np.array_equal(base.lr, other.lr)
    assert other.truth["hr_scan"]["dose"] == 3.0 and other.truth["hr_scan"]["gamma"] == 1.6
    assert not np.array_equal(base.hr, other.hr)
    # A lower dose is a noisier scan.
    lap = lambda x: np.std(ndi.laplace(x.astype(np.float64)))  # noqa: E731
    low = simulate_pair(lr_shape=(80, 100), seed=4, lr_dose=2.0)
    assert lap(low.lr) > 1.5 * lap(base.lr)
    sized = simulate_pair(lr_shape=(80, 100), seed=4, hr_shape=(50, 70))
    assert sized.hr.shape == (50, 70)


def test_inverted_detectors(specimen):
    normal = simulate_pair(specimen, lr_shape=(96, 128), seed=6)
    lr_inv = simulate_pair(specimen, lr_shape=(96, 128), seed=6, lr_inverted=True)
    hr_inv = simulate_pair(specimen, lr_shape=(96, 128), seed=6, hr_inverted=True)
    lr = lambda p: p.lr.astype(np.float32)  # noqa: E731
    assert _ncc(_bin(normal.gt, 2), lr(normal)) > 0.7
    # gt is rendered with the HR detector: an inverted LR (e.g. TSEM vs SE) anti-correlates with
    # it, an inverted HR inverts gt and the HR scan itself.
    assert _ncc(_bin(lr_inv.gt, 2), lr(lr_inv)) < -0.7
    assert _ncc(_bin(hr_inv.gt, 2), lr(hr_inv)) < -0.7
    assert _ncc(interpolate(lr(hr_inv), true_lr_coords(hr_inv.truth)), hr_inv.hr) < -0.5
    assert lr_inv.truth["lr_scan"]["inverted"] and not lr_inv.truth["hr_scan"]["inverted"]


@pytest.mark.parametrize("inside", [0.4, 0.8])
def test_hr_partly_outside_the_lr_field(inside):
    p = simulate_pair(lr_shape=(80, 100), seed=2, hr_inside=inside)
    c = true_lr_coords(p.truth)
    frac = np.mean((c[0] > -0.5) & (c[0] < 79.5) & (c[1] > -0.5) & (c[1] < 99.5))
    assert abs(frac - inside) < 0.03 and abs(p.truth["hr_inside"] - inside) < 0.01
    # The specimen extends beyond the LR field: the overhanging HR shows structure, not an edge
    # smeared out.
    outside = ~((c[0] > -0.5) & (c[0] < 79.5) & (c[1] > -0.5) & (c[1] < 99.5))
    assert p.hr[outside].std() > 0.5 * p.hr[~outside].std()
    # An HR too large to fit is centred on the field rather than refused.
    big = simulate_pair(lr_shape=(80, 100), seed=2, hr_fraction=1.0, rotation_deg=5.0)
    assert big.hr.shape == (160, 200) and 0.85 < big.truth["hr_inside"] < 1.0


@pytest.mark.parametrize("kw", [{"hr_fraction": 1.0, "rotation_deg": 7.0, "zoom": 3},
                                {"hr_inside": 0.4}, {"hr_inside": 0.6, "hr_shape": (200, 200)}])
def test_a_real_specimen_holds_the_overhanging_hr(specimen, kw):
    """The LR field shrinks so that the part of the HR outside it is still on the specimen."""
    from pairsr.simulate import _scan_positions

    p = simulate_pair(specimen, seed=1, **kw)
    x = _scan_positions(p.truth["hr_scan"], p.hr.shape)
    assert x.min() >= 0 and x[0].max() <= specimen.shape[0] - 1
    assert x[1].max() <= specimen.shape[1] - 1
    assert p.truth["hr_inside"] < 0.99


def _period_ncc(image: np.ndarray, exclude: float = 6) -> float:
    """NCC of an image with itself shifted by its strongest period (the highest autocorrelation
    peak farther than ``exclude`` px from zero shift), over the overlap."""
    a = image - image.mean()
    ac = np.fft.fftshift(np.real(np.fft.ifft2(np.abs(np.fft.fft2(a)) ** 2)))
    centre = np.array(ac.shape) // 2
    yy, xx = np.indices(ac.shape) - centre[:, None, None]
    ac[(np.hypot(yy, xx) < exclude) | (np.abs(yy) > image.shape[0] // 4)
       | (np.abs(xx) > image.shape[1] // 4)] = -np.inf
    dy, dx = np.unravel_index(np.argmax(ac), ac.shape) - centre
    h, w = image.shape
    one = image[max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)]
    two = image[max(-dy, 0):h + min(-dy, 0), max(-dx, 0):w + min(-dx, 0)]
    return _ncc(one, two, smooth=0.0)


def test_lattice_specimens_are_periodic_and_the_defects_break_the_period():
    from pairsr.simulate import builtin_specimen

    shape = (256, 256)
    for seed in range(3):
        perfect = builtin_specimen("lattice-perfect", shape, np.random.default_rng(seed), 2.0)
        defect = builtin_specimen("lattice", shape, np.random.default_rng(seed), 2.0)
        assert perfect.dtype == np.float32 and 0 <= perfect.min() and perfect.max() <= 1
        # One period away, the perfect lattice repeats itself (up to the integer shift); the
        # precipitate, vacancies and thickness gradient make the real one less self-similar.
        p, d = _period_ncc(perfect), _period_ncc(defect)
        assert p > 0.96 and d < p - 0.03, (seed, p, d)
    with pytest.raises(ValueError, match="unknown built-in specimen"):
        simulate_pair("graphene", lr_shape=(64, 64))


def test_lattice_pair_round_trip():
    p = simulate_pair("lattice", lr_shape=(96, 128), seed=1, zoom=3, rotation_deg=4.0)
    assert p.gt.shape == (288, 384)
    good = _ncc(interpolate(p.lr.astype(np.float32), true_lr_coords(p.truth)), p.hr)
    assert good > 0.5


def test_draw_acquisition_within_ranges_and_seeded():
    from pairsr.simulate import WIDE_RANGES, default_scale, draw_acquisition

    a = draw_acquisition(np.random.default_rng(3), lr_max=256)
    assert a == draw_acquisition(np.random.default_rng(3), lr_max=256)
    rng = np.random.default_rng(0)
    for _ in range(40):
        kw = draw_acquisition(rng, lr_max=512)
        assert kw["zoom"] in WIDE_RANGES["zoom"]
        assert 128 <= max(kw["lr_shape"]) <= 512
        assert abs(kw["rotation_deg"]) <= WIDE_RANGES["rotation_deg"]
        for key in ("lr_dose", "hr_dose"):
            assert WIDE_RANGES["dose"][0] <= kw[key] <= WIDE_RANGES["dose"][1]
        for key in ("lr_gamma", "hr_gamma"):
            assert WIDE_RANGES["gamma"][0] <= kw[key] <= WIDE_RANGES["gamma"][1]
        assert not (kw["lr_inverted"] and kw["hr_inverted"])
        fraction = np.prod(kw["hr_shape"]) / kw["zoom"] ** 2 / np.prod(kw["lr_shape"])
        assert 0.09 <= fraction <= 1.0
    # The drawn HR fits inside the LR field; a real specimen bounds the LR field.
    kw = draw_acquisition(np.random.default_rng(5), lr_max=160)
    assert simulate_pair(seed=5, **kw).truth["hr_inside"] == 1.0
    kw = draw_acquisition(np.random.default_rng(5), specimen_shape=(300, 420))
    scale = default_scale((300, 420), kw["zoom"])
    assert all(n <= (m - 32) / scale for n, m in zip(kw["lr_shape"], (300, 420)))
    simulate_pair(np.zeros((300, 420), np.float32), seed=5, **kw)  # the specimen covers it
    with pytest.raises(ValueError, match="unknown acquisition"):
        draw_acquisition(rng, vary=("dwell",))


def test_small_specimen_gives_a_pair_inside_the_field():
    rng = np.random.default_rng(1)
    small = ndi.gaussian_filter(rng.standard_normal((300, 300)), 3.0).astype(np.float32)
    small = (small - small.min()) / np.ptp(small)
    for zoom in (2, 4):
        # At x4 the default scale (4 specimen px per LR px) would leave a 67-px LR field; the
        # simulator lowers it to keep MIN_LR_SIDE px, so the HR covers 64 LR px at 25 %.
        p = simulate_pair(small, seed=0, zoom=zoom)
        assert min(p.lr.shape) >= 128 and min(p.hr.shape) >= 128 * 0.5 * zoom
        assert p.truth["hr_inside"] == 1.0 and p.gt.shape == (p.lr.shape[0] * zoom,
                                                              p.lr.shape[1] * zoom)
        c = true_lr_coords(p.truth)
        assert c.min() > 0 and c[0].max() < p.lr.shape[0] - 1 and c[1].max() < p.lr.shape[1] - 1
    with pytest.raises(ValueError, match=r"at least 1\.5"):
        simulate_pair(small, zoom=1.2)
    p = simulate_pair(small, seed=0, zoom=2.4)  # a fractional ratio: gt on the nearest grid, ×2
    assert p.gt.shape == (2 * p.lr.shape[0], 2 * p.lr.shape[1])


def test_gt_drift_follows_the_lr_scan(specimen):
    """With ``gt_drift`` the SR-grid truth samples where the LR scan did: it lines up with the LR
    better than the drift-free one, and nothing else changes."""
    plain = simulate_pair(specimen, seed=8, lr_shape=(96, 128))
    drift = simulate_pair(specimen, seed=8, lr_shape=(96, 128), gt_drift=True)
    assert np.array_equal(plain.lr, drift.lr) and np.array_equal(plain.hr, drift.hr)
    assert not np.allclose(plain.gt, drift.gt)
    lr = drift.lr.astype(np.float32)
    assert _ncc(_bin(drift.gt, 2), lr, smooth=0.5) > _ncc(_bin(plain.gt, 2), lr, smooth=0.5)


# ----------------------------------------------------------------------------- tiled writer


def _written(folder):
    from pairsr.io import read_image

    return [read_image(folder / n).values for n in ("lr.zarr", "hr.tif", "gt.zarr")]


@pytest.mark.parametrize("kw", [{"lr_shape": (150, 200)},
                                {"specimen": "lattice", "lr_shape": (130, 140), "zoom": 3,
                                 "rotation_deg": 5.0, "gt_drift": True}])
def test_tiled_writer_does_not_depend_on_the_tiling(kw, tmp_path):
    """LR, HR and gt are identical whatever the tile (chunk) size, the pair is a physical pair
    (the truth maps the LR onto the HR) and a rerun is identical."""
    from pairsr.simulate import write_simulation

    kw = dict(kw)
    specimen = kw.pop("specimen", None)
    outs = {}
    for chunk in (64, 128):
        truth, kind = write_simulation(tmp_path / str(chunk), specimen, format="zarr",
                                       chunk=chunk, seed=5, **kw)
        assert kind == "zarr"
        outs[chunk] = _written(tmp_path / str(chunk))
    for a, b in zip(outs[64], outs[128], strict=True):
        assert a.shape == b.shape and np.array_equal(a, b)
    lr, hr, gt = outs[64]
    z = round(truth["nominal_zoom"])
    assert lr.shape == kw["lr_shape"] and gt.shape == (z * lr.shape[0], z * lr.shape[1])
    assert hr.shape == tuple(truth["hr_shape"]) and lr.std() > 5
    assert _ncc(interpolate(lr.astype(np.float32), true_lr_coords(truth)), hr) > 0.5
    assert _ncc(_bin(gt, z), lr.astype(np.float32)) > 0.7
    truth2, _ = write_simulation(tmp_path / "again", specimen, format="zarr", chunk=64, seed=5,
                                 **kw)
    assert truth2 == truth and np.array_equal(_written(tmp_path / "again")[0], lr)


def test_tiled_writer_equals_the_in_memory_path_but_for_the_noise(specimen, tmp_path):
    """With a real specimen the tiled writer draws the same truth and renders the same noise-free
    scans: gt is identical, and the LR differs from the in-memory LR by an independent noise
    realisation of the same strength."""
    from pairsr import simulate as sim

    kw = {"seed": 3, "lr_shape": (150, 180), "lr_dose": 200.0}
    mem = simulate_pair(specimen, **kw)
    truth, _ = sim.write_simulation(tmp_path, specimen, format="zarr", chunk=64, **kw)
    lr, hr, gt = _written(tmp_path)
    assert {k: v for k, v in truth.items() if k != "noise_block"} == mem.truth
    assert np.array_equal(gt, mem.gt) and hr.shape == mem.hr.shape
    scan = truth["lr_scan"]
    clean = sim._detect(sim._render(sim._blur(specimen, scan),
                                    sim._scan_positions(scan, lr.shape)), scan)
    tiled, memory = lr / 255.0 - clean, mem.lr / 255.0 - clean
    assert abs(tiled.mean() - memory.mean()) < 0.01
    assert 0.9 < tiled.std() / memory.std() < 1.1
    assert abs(_ncc(tiled, memory, smooth=0.0)) < 0.1  # independent realisations
    # Against a noise-free LR two pixels off, the residual is much larger.
    assert np.std(lr / 255.0 - np.roll(clean, 2, axis=1)) > 1.5 * tiled.std()


def test_tiled_zarr_layout_and_metadata(tmp_path):
    """lr.zarr and gt.zarr are chunked OME-Zarr with the LR pixel size and the SR grid's scale
    and translation; read_image opens them lazily."""
    import dask.array as da
    import zarr

    from pairsr.io import read_image
    from pairsr.simulate import write_simulation

    truth, _ = write_simulation(tmp_path, format="zarr", chunk=64, seed=1, lr_shape=(100, 150),
                                zoom=3)
    px, z = truth["lr_pixel_size_nm"], 3
    lr = zarr.open_group(tmp_path / "lr.zarr", mode="r")
    gt = zarr.open_group(tmp_path / "gt.zarr", mode="r")
    assert lr["0"].chunks == (64, 64) and lr["0"].dtype == np.uint8
    assert gt["0"].chunks == (64, 64) and gt["0"].dtype == np.float32
    for group, scale, shift in ((lr, px, 0.0), (gt, px / z, -px * (z - 1) / (2 * z))):
        (transforms,) = [d["coordinateTransformations"]
                         for d in group.attrs["ome"]["multiscales"][0]["datasets"]]
        assert transforms[0]["scale"] == pytest.approx([scale] * 2)
        assert transforms[1]["translation"] == pytest.approx([shift] * 2)
    image = read_image(tmp_path / "lr.zarr")
    assert isinstance(image.data, da.Array) and image.attrs["pixel_size_nm"] == pytest.approx(px)
    assert read_image(tmp_path / "hr.tif").attrs["pixel_size_nm"] == pytest.approx(
        truth["hr_pixel_size_nm"])


def test_outputs_are_not_overwritten_and_no_stale_format_stays(tmp_path, monkeypatch):
    from pairsr import simulate as sim
    from pairsr.io import OutputExistsError

    small = {"seed": 2, "lr_shape": (64, 96)}
    assert sim.write_simulation(tmp_path, **small)[1] == "tiff"  # small: in memory, as TIFF
    with pytest.raises(OutputExistsError, match=r"lr\.tif"):
        sim.write_simulation(tmp_path, format="zarr", chunk=64, **small)
    monkeypatch.setattr(sim, "MEMORY_BOUND", sim.in_memory_bytes(**small) - 1)
    assert sim.write_simulation(tmp_path, chunk=64, overwrite=True, **small)[1] == "zarr"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gt.zarr", "hr.tif", "lr.zarr",
                                                          "truth.json"]
    with pytest.raises(ValueError, match="multiple of 64"):
        sim.write_simulation(tmp_path / "x", chunk=100, **small)


def test_a_small_real_specimen_is_mirrored_for_a_large_tiled_field(tmp_path):
    """The tiled writer fills a field larger than a real specimen by mirroring it (with a
    warning); the in-memory path refuses."""
    from pairsr.simulate import write_simulation

    rng = np.random.default_rng(2)
    small = ndi.gaussian_filter(rng.standard_normal((120, 150)), 2.0).astype(np.float32)
    small = (small - small.min()) / np.ptp(small)
    with pytest.raises(ValueError, match="covers at most"):
        simulate_pair(small, lr_shape=(128, 192), scale=2.0)
    with pytest.warns(UserWarning, match="mirrored"):  # auto: in memory it cannot be done
        truth, kind = write_simulation(tmp_path, small, chunk=64, seed=0, lr_shape=(128, 192),
                                       scale=2.0)
    assert kind == "zarr"
    lr, hr, _ = _written(tmp_path)
    far = lr[:, -48:].astype(float)  # beyond the specimen: mirrored structure, not a flat edge
    assert lr.shape == (128, 192) and far.std() > 0.5 * lr[:, :48].std()
    assert _ncc(interpolate(lr.astype(np.float32), true_lr_coords(truth)), hr) > 0.3


@pytest.mark.parametrize("name", ["nanocomposite", "lattice"])
def test_procedural_specimens_resemble_the_in_memory_ones(name):
    """The region-evaluable specimens have the in-memory ones' intensity statistics, and a
    window is the same pixels wherever it is cut."""
    from pairsr.simulate import _region_specimen, builtin_specimen

    shape = (1024, 1024)
    whole = builtin_specimen(name, shape, np.random.default_rng(0))
    region = _region_specimen(name, shape, np.random.default_rng(0), 4.0)
    tiled = region((0, 1024), (0, 1024))
    assert tiled.dtype == np.float32 and 0 <= tiled.min() and tiled.max() <= 1
    assert abs(tiled.mean() - whole.mean()) < 0.1 * whole.std()
    assert 0.8 < tiled.std() / whole.std() < 1.25
    for q in (10, 50, 90):
        assert abs(np.percentile(tiled, q) - np.percentile(whole, q)) < 0.1 * whole.std()
    assert np.array_equal(region((100, 300), (-50, 200)), np.vstack(
        [region((100, 180), (-50, 200)), region((180, 300), (-50, 200))]))


def test_cli_simulate_writes_zarr_that_fit_reads(tmp_path):
    from typer.testing import CliRunner

    from pairsr.cli import app
    from pairsr.io import read_image

    run = lambda *a: CliRunner().invoke(app, [str(x) for x in a])  # noqa: E731
    result = run("simulate", tmp_path / "p", "--lr-shape", "96x128", "--format", "zarr",
                 "--chunk", "64")
    assert result.exit_code == 0, result.output
    assert "(zarr)" in result.output and read_image(tmp_path / "p" / "lr.zarr").shape == (96, 128)
    assert run("simulate", tmp_path / "p", "--lr-shape", "96x128").exit_code == 2  # exists
    assert run("simulate", tmp_path / "q", "--chunk", "100").exit_code == 2
    assert run("simulate", tmp_path / "q", "--format", "png").exit_code == 2
