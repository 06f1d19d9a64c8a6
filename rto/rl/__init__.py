"""RL machinery outside Lightning: sampling rollouts and turning them into PPO experience."""
