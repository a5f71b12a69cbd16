"""Hostile and malformed datasets (issue 19 items 2, 6, 7): every path stays inside its root, declared sizes are
checked before allocation, and every problem is one named error (a LabelError naming file and field) or a listed
problem - never another exception, never a file written outside the output folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import busto, camera_rows, phq360, png, png_header_only, tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portrait_core.data.__main__ import main as data_cli
from portrait_core.data.dataset import PortraitDataset
from portrait_core.data.labels import LabelError, validate_document, validate_labels, validate_record
from portrait_core.data.pack import pack_dataset
from portrait_core.data.readers import convert, open_source
from portrait_core.data.safety import (
    MAX_RESOLUTION,
    LimitError,
    PathError,
    contained,
    load_npy,
    name_problem,
    path_problem,
    read_npy,
)

HYP = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _labels(root: Path) -> dict:
    return json.loads((root / "labels.json").read_text())


def _set_record(root: Path, i: int, **fields) -> None:
    doc = _labels(root)
    doc["images"][i].update(fields)
    (root / "labels.json").write_text(json.dumps(doc))


# --- item 2: containment --------------------------------------------------------------------------------------

def test_contained_resolves_inside_or_names_the_problem(tmp_path):
    root = tmp_path / "ds"
    (root / "sub").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("x")
    os.symlink(tmp_path / "secret.txt", root / "sub" / "link.txt")
    os.symlink(tmp_path, root / "up")
    os.symlink(root / "sub", root / "inner")  # a link that stays inside is fine
    assert contained(root, "sub/a.png", "f: r") == Path(os.path.realpath(root)) / "sub" / "a.png"
    assert contained(root, "inner/a.png", "f: r").parent == Path(os.path.realpath(root / "sub"))
    for rel, words in (("../secret.txt", "'..'"), ("/etc/passwd", "absolute"), ("sub/link.txt", "link"),
                       ("up/secret.txt", "outside"), ("a\\..\\b", "separators"), ("", "empty")):
        with pytest.raises(PathError) as e:
            contained(root, rel, "labels.json: images[3].image")
        assert str(e.value).count("labels.json: images[3].image") == 1 and words in str(e.value), (rel, e.value)


def test_label_paths_outside_the_dataset_are_listed_and_never_read(tmp_path):
    root = busto(tmp_path / "ds", n=4)
    png(tmp_path / "outside.png")
    os.symlink(tmp_path / "outside.png", root / "images" / "link.png")
    _set_record(root, 0, image="../outside.png")
    _set_record(root, 1, mask="/etc/hostname")
    _set_record(root, 2, face="images/link.png")
    problems = {(p.field, p.file) for p in validate_labels(root)}
    assert {f for f, _ in problems} == {"images[0].image", "images[1].mask", "images[2].face"}
    assert all(file == str(root / "labels.json") for _, file in problems)
    with pytest.raises(LabelError, match=r"images\[2\]\.face: path 'images/link.png' is a link to"):
        open_source(root)
    src = open_source(root, strict=False)
    assert [r["name"] for r in src.records] == ["r3"]
    with pytest.raises(PathError, match="'..' component"):
        src.read_bytes("../outside.png")
    with pytest.raises(PathError, match="link to"):
        src.read_png("images/link.png")
    # the CLI lists them instead of saying OK
    assert data_cli(["validate", str(root)]) == 1


def test_convert_never_writes_outside_out(tmp_path):
    """Regression (item 2): a record name '../x' or '/abs' wrote PNGs outside --out."""
    root = busto(tmp_path / "ds", n=3)
    victim = tmp_path / "victim"
    victim.mkdir()
    _set_record(root, 0, name="../../victim/evil")
    _set_record(root, 1, name=str(victim / "abs"))
    before = tree(tmp_path / "victim")
    with pytest.raises(LabelError, match=r"images\[0\]\.name: name '\.\./\.\./victim/evil' contains '/'"):
        convert(root, tmp_path / "out")
    with pytest.warns(UserWarning, match="skipping records"):
        convert(root, tmp_path / "out2", on_error="skip", face_resolution=16)
    assert tree(victim) == before
    assert sorted(tree(tmp_path / "out2")) == ["faces/r2.png", "images/r2.png", "labels.json", "masks/r2.png"]


def test_convert_refuses_output_subfolder_linked_elsewhere(tmp_path):
    root = busto(tmp_path / "ds", n=2)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").mkdir()
    os.symlink(elsewhere, tmp_path / "out" / "images")
    with pytest.raises(PathError, match="outside"):
        convert(root, tmp_path / "out", face_resolution=16)
    assert list(elsewhere.iterdir()) == []


def test_phq360_file_names_are_contained(tmp_path):
    png(tmp_path / "secret.png")
    root = phq360(tmp_path / "phq", n=4, names=["../secret.png", "/etc/hostname", "link.png"])
    os.symlink(tmp_path / "secret.png", root / "link.png")
    fields = {p.field: p.message for p in validate_labels(root)}
    assert set(fields) == {"labels[0][0]", "labels[1][0]", "labels[2].image"}, fields
    assert "link to" in fields["labels[2].image"]
    src = open_source(root, strict=False)
    assert [r["image"] for r in src.records] == ["img0003.png"]
    with pytest.warns(UserWarning):
        convert(root, tmp_path / "out", on_error="skip", face_resolution=16)
    assert sorted(tree(tmp_path / "out")) == ["faces/img0003.png", "images/img0003.png", "labels.json",
                                              "masks/img0003.png"]


def test_pack_members_stay_plain(tmp_path):
    """Packed archives hold only images/NAME.webp style members: bad names never reach the zip."""
    root = busto(tmp_path / "ds", n=2)
    _set_record(root, 1, name="../escape")
    with pytest.raises(LabelError, match=r"images\[1\]\.name"):
        pack_dataset(root, tmp_path / "p.zip")
    assert not (tmp_path / "p.zip").exists() and not list(tmp_path.glob(".p.zip*"))


_SEGMENTS = st.sampled_from(["a", "b.png", "..", ".", "", "link", "inlink", "dir", "/", "\\", "\x00", "c:", " "])


@HYP
@given(parts=st.lists(_SEGMENTS, min_size=1, max_size=5), lead=st.sampled_from(["", "/", "../"]))
def test_contained_property(tmp_path_factory, parts, lead):
    """Random relative paths ('..', absolute, links out and in): a path inside the root, or PathError."""
    base = tmp_path_factory.getbasetemp() / "prop"
    root = base / "root"
    if not root.exists():
        (root / "dir").mkdir(parents=True)
        (base / "out.txt").write_text("x")
        os.symlink(base / "out.txt", root / "link")
        os.symlink(root / "dir", root / "inlink")
    rel = lead + "/".join(parts)
    try:
        p = contained(root, rel, "test")
    except PathError as e:
        assert str(e).startswith("1 label problem(s):\n  test: ")
        return
    real_root = os.path.realpath(root)
    assert os.path.realpath(p).startswith(real_root + os.sep) or os.path.realpath(p) == real_root
    assert path_problem(rel) is None


@HYP
@given(name=st.text(max_size=12))
def test_name_problem_property(name):
    why = name_problem(name)
    if why is None:
        assert "/" not in name and "\\" not in name and name not in ("", ".", "..")


# --- item 6: declared sizes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("side", [9000, 60000])  # above our limit; far above it (PIL's own bomb check)
def test_png_bomb_header_is_refused_before_decoding(tmp_path, side):
    root = busto(tmp_path / "ds", n=2)
    (root / "images" / "r1.png").write_bytes(png_header_only(side, side))
    src = open_source(root)
    said = f"declares {side}x{side} pixels" if side == 9000 else "decompression bomb"
    with pytest.raises(LimitError, match=rf"images/r1\.png: \(image\): .*{said}"):
        src.read_png("images/r1.png")
    assert said in src.verify_image("images/r1.png")
    problems = validate_labels(root, check_images=True)
    assert [p.field for p in problems] == ["images[1].image"] and said in problems[0].message
    with pytest.raises(LabelError, match=said):
        PortraitDataset(root)
    with pytest.warns(UserWarning):
        assert len(PortraitDataset(root, on_error="skip")) == 1


@pytest.mark.parametrize("resolution", [0, -3, MAX_RESOLUTION + 1, 10**9, True, "64", 1.5])
def test_info_resolution_range(tmp_path, resolution):
    root = busto(tmp_path / "ds", n=1)
    doc = _labels(root)
    doc["info"]["resolution"] = resolution
    (root / "labels.json").write_text(json.dumps(doc))
    problems = validate_labels(root)
    assert [(p.field, p.file) for p in problems] == [("info.resolution", str(root / "labels.json"))]
    with pytest.raises(LabelError, match="info.resolution: expected an integer from 1 to"):
        PortraitDataset(root)


def test_requested_sizes_are_limited(tmp_path):
    root = busto(tmp_path / "ds", n=1)
    for call in (lambda: PortraitDataset(root, resolution=100000), lambda: convert(root, tmp_path / "o", resolution=0),
                 lambda: pack_dataset(root, tmp_path / "p.zip", face_resolution=10**6)):
        with pytest.raises(LimitError, match="expected an integer from 1 to"):
            call()


def _npy_bytes(arr: np.ndarray, shape=None, descr=None) -> bytes:
    """``arr`` as .npy bytes, optionally with a header lying about its shape or dtype."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr)
    data = buf.getvalue()
    if shape is None and descr is None:
        return data
    hdr = {"descr": descr or np.lib.format.dtype_to_descr(arr.dtype), "fortran_order": False,
           "shape": shape if shape is not None else arr.shape}
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, hdr)
    return out.getvalue() + arr.tobytes()


def _shhq(root: Path, n: int = 2) -> Path:
    root.mkdir(parents=True)
    (root / "names.txt").write_text("\n".join(f"s{i}" for i in range(n)) + "\n")
    for i in range(n):
        png(root / "images" / f"s{i}.png")
    tables = {"camera_pose": np.tile([np.pi / 2, np.pi / 2], (n, 1)), "joint_eulers": np.zeros((n, 6, 3)),
              "betas": np.zeros((n, 10)), "id": np.zeros((n, 80)), "expression": np.zeros((n, 64))}
    for k, a in tables.items():
        np.save(root / f"{k}.npy", a.astype(np.float32))
    return root


def test_npy_headers_checked_before_loading(tmp_path):
    root = _shhq(tmp_path / "shhq")
    assert len(open_source(root).records) == 2
    (root / "betas.npy").write_bytes(_npy_bytes(np.zeros((2, 10), np.float32), shape=(10**12, 10)))
    with pytest.raises(LimitError, match=r"betas\.npy: \(array\): declares shape \[1000000000000, 10\]"):
        open_source(root)
    assert "betas.npy" in validate_labels(root)[0].file
    (root / "betas.npy").write_bytes(_npy_bytes(np.zeros((2, 10), np.float32), shape=(2000, 10)))
    problems = validate_labels(root)
    assert any("holds only" in p.message for p in problems), problems
    (root / "betas.npy").write_bytes(_npy_bytes(np.zeros((2, 10), np.float32), descr="|O"))
    assert any("not accepted" in p.message for p in validate_labels(root))


def test_npz_member_shapes_checked(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    with zipfile.ZipFile(root / "labels.npz", "w") as zf:
        zf.writestr("names.npy", _npy_bytes(np.array(["a"])))
        zf.writestr("betas.npy", _npy_bytes(np.zeros((1, 10), np.float32), shape=(10**11, 10)))
    with pytest.raises(LimitError, match=r"labels\.npz: betas: \(array\): declares shape"):
        open_source(root)


@HYP
@given(shape=st.lists(st.integers(-3, 2**40), max_size=4), descr=st.sampled_from(["<f4", "<i8", "|O", "<U3", "|b1"]),
       cut=st.integers(0, 200), junk=st.binary(max_size=40))
def test_read_npy_property(shape, descr, cut, junk):
    """Random declared shapes/dtypes and truncations: an array matching its header, or a LabelError."""
    hdr = {"descr": descr, "fortran_order": False, "shape": tuple(shape)}
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, hdr)
    data = (buf.getvalue() + junk)[:max(0, len(buf.getvalue()) + len(junk) - cut)]
    try:
        arr = read_npy(io.BytesIO(data), len(data), "t.npy")
    except LabelError as e:
        assert "t.npy" in str(e)
        return
    assert list(arr.shape) == shape and arr.dtype.kind in "biuf"


def test_load_npy_refuses_fifo(tmp_path):
    os.mkfifo(tmp_path / "fifo.npy")
    with pytest.raises(PathError, match="not a regular file"):
        load_npy(tmp_path / "fifo.npy")


# --- item 7: one bad row, encodings ---------------------------------------------------------------------------

def test_phq360_bad_camera_row_is_named_skipped_and_listed(tmp_path, capsys):
    """Regression (item 7): one non-rigid camera row aborted the whole set with no file or row named."""
    bad_row = [0.0] * 31
    root = phq360(tmp_path / "phq", n=4, rows={1: bad_row, 2: [1.0] * 30 + ["x"]})
    with pytest.raises(LabelError) as e:
        open_source(root)
    assert f"{root / 'dataset.json'}: labels[1][1]: camera (numbers 0..24): cam2world bottom row" in str(e.value)
    assert f"{root / 'dataset.json'}: labels[2][1]: expected 31 finite numbers" in str(e.value)
    src = open_source(root, strict=False)
    assert [r["image"] for r in src.records] == ["img0000.png", "img0003.png"]
    assert [p.field for p in validate_labels(root)] == ["labels[1][1]", "labels[2][1]"]
    with pytest.warns(UserWarning, match="skipping"):
        convert(root, tmp_path / "out", on_error="skip", face_resolution=16)
    assert _labels(tmp_path / "out")["info"]["count"] == 2
    capsys.readouterr()
    assert data_cli(["validate", str(root)]) == 1
    out = capsys.readouterr().out
    assert "labels[1][1]" in out and "2 problem(s)" in out


def test_phq360_names_that_collide_are_named(tmp_path):
    """'a/x.png' and 'a_x.png' both become record 'a_x': the second is a named problem, not an overwrite."""
    root = phq360(tmp_path / "phq", n=2, names=["a/x.png", "a_x.png"])
    png(root / "a" / "x.png")
    png(root / "a_x.png")
    src = open_source(root, strict=False)
    assert [r["image"] for r in src.records] == ["a/x.png"]
    assert [(p.field, "record name 'a_x' of labels[0]" in p.message) for p in src.problems] == [("labels[1][0]", True)]


@pytest.mark.parametrize("kind", ["busto", "busto-zip", "phq360", "shhq-names"])
def test_non_utf8_labels_are_a_named_error(tmp_path, kind):
    if kind == "phq360":
        root = phq360(tmp_path / "phq", n=1)
        (root / "dataset.json").write_bytes(b'{"labels": ["\xff\xfe"]}')
        where = f"{root / 'dataset.json'}: (encoding): not UTF-8 text (byte 0xff at offset 13)"
    elif kind == "shhq-names":
        root = _shhq(tmp_path / "shhq")
        (root / "names.txt").write_bytes(b"s0\n\xc3(\n")
        where = f"{root / 'names.txt'}: (encoding): not UTF-8"
    else:
        root = busto(tmp_path / "ds", n=1)
        (root / "labels.json").write_bytes(b'{"format": "\xe9"}')
        where = f"{root / 'labels.json'}: (encoding): not UTF-8"
        if kind == "busto-zip":
            with zipfile.ZipFile(tmp_path / "ds.zip", "w") as zf:
                zf.write(root / "labels.json", "labels.json")
            root = tmp_path / "ds.zip"
            where = f"{root}:labels.json: (encoding): not UTF-8"
    with pytest.raises(LabelError) as e:
        open_source(root)
    assert where in str(e.value)
    assert validate_labels(root)[0].field == "(encoding)"


def test_json_nesting_and_huge_numbers_are_named(tmp_path):
    root = busto(tmp_path / "ds", n=1)
    (root / "labels.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(LabelError, match=r"labels\.json: \(json\)"):
        open_source(root)
    (root / "labels.json").write_text('{"a": ' + "9" * 5000 + "}")
    with pytest.raises(LabelError, match=r"labels\.json: \(json\)"):
        open_source(root)


# --- property tests for the label validator and the loaders ---------------------------------------------------

_JUNK = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**400, -(10**400)]) | st.floats() |
    st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
_PATHS = st.sampled_from(["images/r0.png", "../x.png", "/etc/hostname", "images/../labels.json", "", "a\\b",
                          "images/link.png", "images/missing.png", None, 3])


def _good_record(i: int = 0) -> dict:
    cam = [float(v) for v in camera_rows(1)[0]]
    return {"name": f"r{i}", "image": "images/r0.png", "mask": None, "face": None, "camera": cam,
            "face_camera": cam, "pose": [[0.0] * 3] * 6, "expression": [0.0] * 64, "identity": [0.0] * 80,
            "body_shape": [0.0] * 10}


@st.composite
def _records(draw):
    rec = _good_record()
    for key in draw(st.lists(st.sampled_from(sorted(rec) + ["camera_angles", "mesh"]), max_size=4, unique=True)):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            rec.pop(key, None)
        elif choice == 1 and key in ("image", "mask", "face"):
            rec[key] = draw(_PATHS)
        elif choice == 1 and key == "mesh":
            rec[key] = {"posed": draw(_PATHS)}
        elif choice in (1, 2) and key == "camera_angles":
            num = st.sampled_from([10**400, -(10**400), float("nan"), float("inf"), True, None, "1", 0.5, 2])
            rec[key] = {"pitch": draw(num), "yaw": draw(num), "radius": draw(num)}
        elif choice == 2 and isinstance(rec.get(key), list):
            arr = np.asarray(rec[key], dtype=float)
            arr.reshape(-1)[draw(st.integers(0, arr.size - 1))] = draw(st.floats())
            rec[key] = arr.tolist()
        else:
            rec[key] = draw(_JUNK)
    return rec


@HYP
@given(rec=_records())
def test_validate_record_property(rec):
    """Malformed records: a list of problems (each naming file and field), never an exception."""
    problems = validate_record(rec, "images[0]", "labels.json")
    assert all(p.file == "labels.json" and p.field.startswith("images[0]") for p in problems)
    if not problems:
        assert path_problem(rec["image"]) is None and name_problem(rec["name"]) is None


@HYP
@given(doc=_JUNK | st.fixed_dictionaries({"format": st.just("busto-portraits"), "format_version": st.just(1),
                                          "info": _JUNK, "images": st.lists(_records(), max_size=3)}))
def test_validate_document_property(doc):
    problems = validate_document(doc, "labels.json")
    assert all(p.file == "labels.json" for p in problems)


@HYP
@given(records=st.lists(_records(), min_size=1, max_size=3), resolution=_JUNK | st.integers(-5, 10**6))
def test_busto_loader_property(tmp_path_factory, records, resolution):
    """Random label files over a real folder (with a link out): loads (only contained, valid records) or
    raises a LabelError - in strict and lenient mode, for validate, PortraitDataset and convert."""
    base = tmp_path_factory.getbasetemp() / "loader"
    template = base / "template"
    if not template.exists():
        busto(template, n=1)
        png(base / "outside.png")
        os.symlink(base / "outside.png", template / "images" / "link.png")
    root = base / "case"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(template, root, symlinks=True)
    for i, r in enumerate(records):
        if isinstance(r.get("name"), str):
            r["name"] = f"{r['name']}_{i}"
    doc = {"format": "busto-portraits", "format_version": 1,
           "info": {"resolution": resolution, "yaw_mode": "frontal", "generator": "t", "seed": 0},
           "images": records}
    (root / "labels.json").write_text(json.dumps(doc, allow_nan=True))
    problems = validate_labels(root, check_images=True)
    try:
        src = open_source(root, strict=False)
    except LabelError:
        assert problems
        return
    for rec in src.records:
        for key in ("image", "mask", "face"):
            if rec.get(key):
                p = os.path.realpath(root / rec[key])
                assert p.startswith(os.path.realpath(root) + os.sep)
    try:
        ds = PortraitDataset(root, check_images=True)
    except LabelError:
        assert problems
    else:
        assert all(".mesh" in p.field for p in problems), problems  # meshes are not loaded for training
        assert ds[0]["image"].shape[0] == 3
    out = base / "converted"
    shutil.rmtree(out, ignore_errors=True)
    try:
        with pytest.warns(UserWarning) if problems else _nothing():
            convert(root, out, on_error="skip", face_resolution=8)
    except LabelError:
        pass
    if out.exists():
        for p in out.rglob("*"):
            assert os.path.realpath(p).startswith(os.path.realpath(out))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_cli_convert_reports_one_error_line_and_writes_nothing_outside(tmp_path, capsys):
    root = busto(tmp_path / "ds", n=2)
    _set_record(root, 0, name="../escaped")
    rc = data_cli(["convert", str(root), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert err.startswith("error: ") and "images[0].name: name '../escaped' contains '/'" in err
    assert not (tmp_path / "escaped.png").exists() and not list(tmp_path.glob("*.png"))


def test_a_record_without_an_image_path_is_a_problem_naming_the_field():
    for image in (None, 3, ""):
        rec = _good_record()
        rec["image"] = image
        problems = validate_record(rec, "images[0]", "labels.json")
        assert [p.field for p in problems] == ["images[0].image"], image
    rec = _good_record()  # mask and face may be null
    assert validate_record(rec, "images[0]", "labels.json") == []
