"""Custom images are built the same way as the default one and run the same way."""

from __future__ import annotations

from sandbox import Outcome, Sandbox
from sandbox.host import image


def test_custom_image_from_a_requirements_file(tmp_path):
    req = tmp_path / "requirements.txt"
    req.write_text("tabulate==0.10.0\n")
    pre = tmp_path / "preload.txt"
    pre.write_text("tabulate\n")
    img = image.build("test-tiny", requirements=req, preload=pre, log=lambda m: None)
    assert img.manifest["packages"]["tabulate"] == "0.10.0"
    assert "pyseccomp" in img.manifest["packages"]  # the guest's own dependency, always added
    assert "numpy" not in img.manifest["packages"]
    # A second build with the same lock is a no-op.
    assert image.build("test-tiny", requirements=req, preload=pre, log=lambda m: None).manifest["lock"] == \
        img.manifest["lock"]
    with Sandbox(slots=1, image="test-tiny") as sb:
        assert sb.image_info()["preload"] == ["tabulate"]
        r = sb.run("import sys\nprint('tabulate' in sys.modules, 'numpy' in sys.modules)\n"
                   "from tabulate import tabulate\nprint(tabulate([[1, 2]], tablefmt='plain'))")
        assert r.outcome is Outcome.OK, r
        assert r.stdout == "True False\n1  2\n"
        # Still fully isolated: the policy and the jail are the same for every image.
        assert sb.run("import ctypes; ctypes.CDLL(None).syscall(101, 0, 0, 0, 0)").outcome is \
            Outcome.POLICY_VIOLATION


def test_bad_image_names_and_missing_images_are_clear_errors(tmp_path):
    import pytest
    from sandbox import ImageError
    with pytest.raises(ImageError, match="not built"):
        image.load_any("never-built")
    with pytest.raises(ImageError, match="must be letters"):
        image.build("../evil", requirements=tmp_path / "x")


def test_state_dir_the_jail_would_hide_is_refused_before_building(tmp_path, monkeypatch):
    import pytest
    from sandbox import ImageError
    # /tmp inside the jail is a fresh tmpfs: an image kept under the host's /tmp would vanish.
    monkeypatch.setenv("SANDBOX_HOME", str(tmp_path / "state"))
    assert str(tmp_path).startswith("/tmp/")
    with pytest.raises(ImageError, match="mounts a tmpfs over"):
        image.build("default", log=lambda m: None)
    assert not (tmp_path / "state").exists()
