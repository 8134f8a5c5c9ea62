"""The host's end of a jail: the engine behind the public API.

    jail.py          nsjail's command line and config for one jail; spawns it
    devices.py       the jail's own device nodes (no inode shared with another jail)
    cgroups.py       memory, pids and CPU limits and counters (cgroup v1 and v2)
    image.py         the image: a pinned venv with the scientific stack, its manifest
    doctor.py        can this host run jails safely? (`sandbox doctor`)
    jail_process.py  one running jail: its process, pidfd, framed pipes, last words, kill
    slot.py          a warm jail that serves one stateless run at a time
    session_jail.py  a jail whose zygote holds many sessions at once
    pool.py          the supervisor of the slots (start, replace, recycle, queue)
    wire.py          requests to the jail, replies from it, checked as hostile, into Results

Layers above (server, compat, agent, batch) never import this package: they call the public API.
"""
