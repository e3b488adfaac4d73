"""``python -m hami.monitor``: the node monitor without loading every other ``hami`` command.

``hami monitor`` imports the whole command line (the scheduler, webhook and device plugin with
gRPC, cryptography and pydantic: ~78 MB resident); this entry loads only the monitor (~45 MB),
which is what the chart's DaemonSet runs (issue 11: monitor RSS <= 60 MB).
"""

from hami.monitor.cli import monitor

if __name__ == "__main__":
    monitor(prog_name="hami monitor")
