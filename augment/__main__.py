from augment.cli import cli
import augment.share  # noqa: F401,E402  registers publish and fetch
from augment.pack import pack_cli  # noqa: E402

cli.add_command(pack_cli)

if __name__ == "__main__":
    cli(prog_name="python -m augment")
