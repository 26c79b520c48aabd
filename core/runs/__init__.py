"""Runs, wherever they run: the torch-free plumbing between a trainer and whoever follows
it. The run folder and its files (``folder``: the lock, the state, each file's name), the
events a trainer writes (``events``), asking it to stop (``stopping``), the disk it needs
(``disk``), the machine a run lives on (``host``: this computer or an ssh host, through
``transport``) and the agent that does the work there (``agent``)."""
