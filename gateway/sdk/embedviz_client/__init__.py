"""embedviz from Python and the shell: `Client` for notebooks and scripts, `embedviz` (the
console script, `embedviz_client.cli`) for the terminal. See docs/cli.md."""

from embedviz_client.client import ApiError, Client, JobFailed, message_dict
from embedviz_client.credentials import Credentials, CredentialStore, config_dir

__all__ = ["ApiError", "Client", "CredentialStore", "Credentials", "JobFailed", "config_dir", "message_dict"]
