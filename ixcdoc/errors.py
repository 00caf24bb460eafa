"""The error hierarchy and the exit codes it maps to.

Library code raises these; only the CLI turns them into one red line and an exit code.
Every message names what it is about (file, page, key, count) so it stands on its own.
"""

from __future__ import annotations

# Exit codes, documented in README.md and docs/output.md.
EXIT_OK = 0
EXIT_FATAL = 1  # no usable device, weights missing or broken, model error outside page work
EXIT_USAGE = 2  # bad arguments
EXIT_PARTIAL = 3  # the run finished but some pages (or files) failed; their records say why
EXIT_INTERRUPTED = 130  # Ctrl-C
EXIT_TERMINATED = 143  # SIGTERM, as 128 + 15 (a server stopped by its supervisor)
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (`| head`), as 128 + SIGPIPE


class IxcdocError(Exception):
    """Base class: a message for people, a machine-readable code and an exit code."""

    exit_code: int = EXIT_FATAL
    code: str = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other __init__ arguments; rebuild from args and attributes so the
        # error survives pickling (pages are rendered in a worker process).
        return (_restore, (type(self), self.args, self.__dict__))


def _restore(cls: type[IxcdocError], args: tuple[object, ...], state: dict) -> IxcdocError:
    err = cls.__new__(cls)
    Exception.__init__(err, *args)
    err.__dict__.update(state)
    return err


class Terminated(Exception):
    """SIGTERM stopped a long-running command (the server) once it had cleaned up."""


class UsageError(IxcdocError):
    """Bad arguments: a page range that does not parse, an unknown tier, conflicting options."""

    exit_code = EXIT_USAGE
    code = "usage"


class InputError(IxcdocError):
    """A file or page that cannot be read. Recorded per page; a batch goes on.

    Codes: not_found, empty, unreadable, unsupported, corrupt, password_required,
    bad_password, too_large, page_out_of_range, no_documents.
    """

    exit_code = EXIT_PARTIAL
    code = "input"

    def __init__(
        self, source: str, problem: str, *, code: str = "input", page: int | None = None
    ) -> None:
        self.source = source
        self.page = page
        self.problem = problem
        where = source if page is None else f"{source} page {page}"
        super().__init__(f"{where}: {problem}", code=code)


class WeightsError(IxcdocError):
    """The checkpoint is missing, incomplete or does not match the architecture."""

    exit_code = EXIT_FATAL
    code = "weights"


class DeviceError(IxcdocError):
    """No usable device for the requested run (no CUDA, not enough memory, missing kernel)."""

    exit_code = EXIT_FATAL
    code = "device"


class ModelError(IxcdocError):
    """The model could not run on an input for a reason that is not the input's fault."""

    exit_code = EXIT_FATAL
    code = "model"
