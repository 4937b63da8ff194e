from bastion.cli.main import run

run()
