"""The volunteer package: donate a machine with one command (`swarmllm volunteer`, `swarmllm setup --web`).

    plan.py       pure: (machine, caps, the swarm's models) -> which model and blocks to serve, and why
    run.py        survey the machine and the swarm, build the node's configuration, run it
    schedule.py   --schedule and --when-idle: when the node pauses (drains) and resumes

It sits above server/ and swarm/ (it runs a ServerNode) and below cli_volunteer.py.
"""
