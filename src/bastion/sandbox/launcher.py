"""The first lines the sandboxed interpreter runs (`python -c LAUNCHER RESULTS_FD`): set the resource limits, open
the observation start marker, say `ready`, then run `bastion.sandbox.worker`, which imports PyTorch while the parent
prepares the request."""

LAUNCHER = """import json, os, resource, sys
for name, value in json.loads(os.environ.pop('BASTION_SANDBOX_LIMITS', '{}')).items():
    kind = getattr(resource, name)
    hard = resource.getrlimit(kind)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(kind, (value, value))
try:
    os.close(os.open(os.environ.pop('BASTION_SANDBOX_MARKER'), os.O_RDONLY))
except OSError:
    pass
os.write(int(sys.argv[1]), b'{"type": "ready"}\\n')
import runpy
runpy.run_module('bastion.sandbox.worker', run_name='__main__', alter_sys=True)
"""
AUDIT_ENV = "BASTION_SANDBOX_AUDIT"  # =1: record Python audit events (the observer when strace is missing)
JOB_ENV = "BASTION_SANDBOX_JOB"  # attack, defend or assess: what the worker imports before the request arrives
