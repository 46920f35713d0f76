"""Repository-wide pytest hook: give nbval the notebooks' reference outputs (see labutils/infra/notebook_refs.py).

The notebooks are committed without outputs; the expected outputs of `# NBVAL_CHECK_OUTPUT` cells live in
notebooks/reference_outputs/. Without this hook nbval would treat those cells as never run and compare nothing.
"""

import os

os.environ.setdefault("LAB_PROFILE", "quick")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported; see the Makefile

try:
    import nbformat
    import nbval.plugin as _nbval_plugin
except ImportError:  # nbval not installed: plain unit-test runs still work
    _nbval_plugin = None

if _nbval_plugin is not None:
    from labutils.infra.notebook_refs import attach_references

    class _NbformatWithReferences:
        """nbformat, except that `read` attaches the stored reference outputs."""

        def __getattr__(self, name):
            return getattr(nbformat, name)

        @staticmethod
        def read(path, as_version, **kwargs):
            return attach_references(nbformat.read(path, as_version=as_version, **kwargs), path)

    _nbval_plugin.nbformat = _NbformatWithReferences()
