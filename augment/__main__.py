from augment.cli import cli
import augment.share  # noqa: F401,E402  registers publish and fetch
import augment.pack  # noqa: F401,E402  registers pack

if __name__ == "__main__":
    cli(prog_name="python -m augment")
