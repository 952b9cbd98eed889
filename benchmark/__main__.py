from common.errors import run_command

from .cli import main

run_command(main)
