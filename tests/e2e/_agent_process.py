"""An agent process for end-to-end tests: `python tests/e2e/_agent_process.py URL ID INTERVAL_S KEEPALIVE_S`.

It uses the SDK with no kill callback (so a `kill` command ends it with SIGTERM) and does nothing else.
"""

import sys
import time

from fleetpulse.publisher import Agent

url, agent_id, interval_s, keepalive_s = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
agent = Agent(agent_id, broker=url, interval_s=interval_s, keepalive_s=keepalive_s)
if not agent.start(wait_s=10):
    sys.exit("no connection")
print(f"born {agent.session}", flush=True)
while True:
    time.sleep(1)
