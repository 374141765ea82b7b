"""Build for payauth: protos/ compiled by grpc_tools.protoc, core_ext/ by Cython.

Everything installs under one import namespace, `payauth`: the folders of the
repository are mapped onto it with `package_dir`, and the generated protobuf
modules are written next to their .proto sources (git-ignored), so `pip install .`,
`pip install -e .` and `python -m build --wheel` all see the same tree.
"""

from __future__ import annotations

import os
import pathlib

from setuptools import Command, Extension, setup
from setuptools.command.build_ext import build_ext as _build_ext
from setuptools.command.build_py import build_py as _build_py

HERE = pathlib.Path(__file__).parent.resolve()
PROTO_ROOT = HERE / "protos"
PROTO_PACKAGE = PROTO_ROOT / "payauth" / "v1"


# Every core_ext/<name>.pyx becomes payauth.core.<name>; C libraries they link against:
EXTENSION_LIBRARIES = {"keyed_hash": ["crypto"]}


class build_protos(Command):  # noqa: N801 - setuptools command naming
    """Compile protos/payauth/v1/*.proto into *_pb2.py, *_pb2.pyi and *_pb2_grpc.py."""

    description = "compile the payauth .proto files with grpc_tools.protoc"
    user_options: list[tuple[str, str | None, str]] = []

    def initialize_options(self) -> None:
        pass

    def finalize_options(self) -> None:
        pass

    def run(self) -> None:
        from importlib.resources import files

        from grpc_tools import protoc

        well_known = str(files("grpc_tools") / "_proto")
        sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_PACKAGE.glob("*.proto"))
        args = [
            "grpc_tools.protoc",
            f"-I{PROTO_ROOT}",
            f"-I{well_known}",
            f"--python_out={PROTO_ROOT}",
            f"--pyi_out={PROTO_ROOT}",
            f"--grpc_python_out={PROTO_ROOT}",
            *sources,
        ]
        # protoc resolves the sources against -I, so run it from the proto root.
        cwd = os.getcwd()
        os.chdir(PROTO_ROOT)
        try:
            if protoc.main(args) != 0:
                raise SystemExit("protoc failed on protos/payauth/v1")
        finally:
            os.chdir(cwd)
        (PROTO_PACKAGE / "__init__.py").write_text(
            '"""Generated protobuf and gRPC modules of the payauth v1 API."""\n'
        )


class build_py(_build_py):  # noqa: N801
    """Generate the protobuf modules before collecting Python sources."""

    def run(self) -> None:
        self.run_command("build_protos")
        super().run()


def _pxd_tree() -> pathlib.Path:
    """Lay the core's .pxd files out under their import names (payauth/core/*.pxd).

    core_ext/ installs as payauth.core, so Cython looks for payauth/core/<name>.pxd
    both for a module's own declarations and for `cimport payauth.core.<name>`;
    this tree of links gives it that layout without moving the sources.
    """
    root = HERE / "build" / "cython-include"
    package = root / "payauth" / "core"
    package.mkdir(parents=True, exist_ok=True)
    for marker in (root / "payauth" / "__init__.pxd", package / "__init__.pxd"):
        marker.touch()
    for stale in package.glob("*.pxd"):
        if stale.is_symlink():
            stale.unlink()
    for pxd in (HERE / "core_ext").glob("*.pxd"):
        (package / pxd.name).symlink_to(pxd)
    return root


class build_ext(_build_ext):  # noqa: N801
    """Cythonize core_ext/ (annotated HTML with PAYAUTH_CYTHON_ANNOTATE=1)."""

    def finalize_options(self) -> None:
        from Cython.Build import cythonize

        include = _pxd_tree()

        directives = {
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
        }
        if os.environ.get("PAYAUTH_CYTHON_DEBUG"):
            directives.update(linetrace=True, boundscheck=True, wraparound=True)
        # Cythonize the distribution's extensions (self.extensions is not set yet), so
        # every later build_ext, editable or not, compiles the generated C.
        self.distribution.ext_modules = cythonize(
            self.distribution.ext_modules,
            compiler_directives=directives,
            annotate=bool(os.environ.get("PAYAUTH_CYTHON_ANNOTATE")),
            force=bool(os.environ.get("PAYAUTH_CYTHON_ALWAYS")),
            include_path=[str(include)],
        )
        # setuptools prepares each extension here, so cythonize comes first.
        super().finalize_options()


# The proto package must exist before setuptools validates package_dir.
if not (PROTO_PACKAGE / "__init__.py").exists():
    (PROTO_PACKAGE / "__init__.py").write_text(
        '"""Generated protobuf and gRPC modules of the payauth v1 API."""\n'
    )

setup(
    packages=["payauth.v1", "payauth.server", "payauth.server.functions", "payauth.clients",
              "payauth.core"],
    package_dir={
        "payauth.v1": "protos/payauth/v1",
        "payauth.server": "server",
        "payauth.server.functions": "server/functions",
        "payauth.clients": "clients",
        "payauth.core": "core_ext",
    },
    package_data={
        "payauth.v1": ["*.proto", "*.pyi"],
        "payauth.server.functions": ["*.lua"],
        "payauth.core": ["*.pyi", "*.pxd", "py.typed"],
    },
    ext_modules=[
        Extension(f"payauth.core.{pyx.stem}", sources=[f"core_ext/{pyx.name}"],
                  libraries=EXTENSION_LIBRARIES.get(pyx.stem, []))
        for pyx in sorted((HERE / "core_ext").glob("*.pyx"))
    ],
    cmdclass={"build_protos": build_protos, "build_py": build_py, "build_ext": build_ext},
)
