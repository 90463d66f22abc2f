"""The docker tier's images are cached by content: the base image and its debootstrapped
root file system are named by the suite and package list, the runtime image by its base
and jars, so CI rebuilds exactly when one of them changed."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra import docker_images


def test_a_new_package_list_is_a_new_base_image_and_a_new_runtime_image(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs, mirror_libs = tmp_path / "libs", tmp_path / "mirror-libs"
    for d in (libs, mirror_libs):
        d.mkdir()
        (d / "a.jar").write_bytes(b"jar")
    base, runtime = docker_images.base_tag(), docker_images.runtime_tag(libs, mirror_libs)
    assert base == docker_images.base_tag()  # stable
    monkeypatch.setattr(docker_images, "PACKAGES", (*docker_images.PACKAGES, "curl"))
    assert docker_images.base_tag() != base
    assert docker_images.runtime_tag(libs, mirror_libs) != runtime


def test_a_changed_jar_is_a_new_runtime_image(tmp_path: Path) -> None:
    libs, mirror_libs = tmp_path / "libs", tmp_path / "mirror-libs"
    for d in (libs, mirror_libs):
        d.mkdir()
        (d / "a.jar").write_bytes(b"jar")
    before = docker_images.runtime_tag(libs, mirror_libs)
    (mirror_libs / "b.jar").write_bytes(b"another")
    assert docker_images.runtime_tag(libs, mirror_libs) != before


def test_the_base_root_file_system_is_kept_where_USER_DOCKER_CACHE_says(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("USER_DOCKER_CACHE", raising=False)
    home = tmp_path / "home"
    default = docker_images.base_cache(home)
    assert default.parent == home / "docker"
    monkeypatch.setenv("USER_DOCKER_CACHE", str(tmp_path / "ci-cache"))
    cached = docker_images.base_cache(home)
    assert cached.parent == tmp_path / "ci-cache"
    assert cached.name == default.name
    assert docker_images.base_tag().split(":")[1] in cached.name
