"""Energy market: thousands of home batteries bid 48-hour schedules; the driver clears each hour.

    python examples/energy_market.py [--agents 2000] [--hours 24] [--workers 2] [--backend process]

Each market hour, every battery (a stateful agent living in a shoal worker) plans its charge
schedule for the next 48 hours against the price forecast: a small quadratic programme solved
by projected gradient with numpy (buy when cheap, sell when dear, stay within its power and
capacity, do not stray far from its previous plan). The driver adds the first hour of every
plan to the households' base load, clears the market on a linear supply curve, and feeds the
price back: each battery settles its first hour at that price, and the forecast moves with the
error. Only the forecast goes out (pickled once per hour) and only the 48-hour bids come back:
the batteries' state never leaves their worker.
"""
import argparse
import time

import numpy as np

import shoal

HORIZON = 48


class Battery:
    """A home battery: state of charge, previous plan, money earned."""

    def __init__(self, capacity, power, seed):
        rng = np.random.default_rng(seed)
        self.capacity = float(capacity)                       # kWh
        self.power = float(power)                             # kW, charge or discharge
        self.soc = self.capacity * rng.uniform(0.2, 0.8)      # kWh stored now
        self.plan = np.zeros(HORIZON)                         # kW per hour, + charges
        self.patience = rng.uniform(0.3, 1.0)                 # how much it dislikes changing plans
        self.profit = 0.0                                     # EUR

    def bid(self, forecast, iterations=20, lr=0.1, mu=0.02):
        """The 48-hour schedule minimising cost + patience/2 |p - plan|^2, within
        |p| <= power and 0 <= soc + cumsum(p) <= capacity (a penalty), by projected gradient.
        Prices count relative to the forecast's own mean and spread."""
        signal = (forecast - forecast.mean()) / (forecast.std() + 1e-9)
        p = self.plan.copy()
        for _ in range(iterations):
            level = self.soc + np.cumsum(p)
            over = np.maximum(level - self.capacity, 0.0) - np.maximum(-level, 0.0)
            grad = signal + self.patience * (p - self.plan) + mu * np.cumsum(over[::-1])[::-1]
            p = np.minimum(np.maximum(p - lr * grad, -self.power), self.power)
        self.plan = p
        return p

    def settle(self, price):
        """Executes the first hour of the plan at the cleared price; the plan moves on an hour."""
        energy = min(max(self.plan[0], -self.soc), self.capacity - self.soc)
        self.soc += energy
        self.profit -= energy * price / 1000.0                # EUR/MWh -> EUR/kWh
        self.plan = np.append(self.plan[1:], 0.0)
        return energy


HOUSEHOLDS_PER_BATTERY = 20


def base_load(hours, households):
    """Households' demand without batteries, kW: a morning and an evening peak."""
    t = np.arange(hours) % 24
    shape = 0.6 + 0.25 * np.exp(-((t - 8) ** 2) / 6) + 0.5 * np.exp(-((t - 19) ** 2) / 5)
    return households * shape


def supply_price(demand_kw, households):
    """Linear supply curve, EUR/MWh: dearer as demand grows."""
    return 20.0 + 80.0 * demand_kw / households


def run(agents=2000, hours=24, workers=2, backend="process", verbose=True):
    """Runs the market; returns the hourly cleared prices, the batteries' total profit and the
    seconds spent in the market hours (the pool's start and the agents' creation excluded)."""
    rng = np.random.default_rng(42)
    fleet_args = [dict(capacity=rng.choice([5.0, 10.0, 13.5]), power=rng.choice([2.5, 5.0]), seed=i)
                  for i in range(agents)]
    households = HOUSEHOLDS_PER_BATTERY * agents
    load = base_load(hours + HORIZON, households)
    forecast = supply_price(load[:HORIZON], households)
    prices = []
    with shoal.Executor(workers, backend=backend, preload=("numpy",)) as ex:
        fleet = ex.agents(Battery, fleet_args)
        if verbose:
            print(f"  {agents} batteries on {workers} {backend} workers; hour, battery load, price:")
        t0 = time.perf_counter()
        for hour in range(hours):
            bids = fleet.call("bid", forecast)              # every battery in parallel
            charge = sum(b[0] for b in bids)                # the first hour of every plan, kW
            price = supply_price(load[hour] + charge, households)
            fleet.call("settle", price)                     # the price goes back to each battery
            # Tomorrow's forecast: the base curve, corrected by today's error, fading out.
            ahead = supply_price(load[hour + 1:hour + 1 + HORIZON], households)
            error = price - forecast[0]
            forecast = ahead + error * 0.8 ** np.arange(1, HORIZON + 1)
            prices.append(price)
            if verbose and (hour % 4 == 0 or hour == hours - 1):
                print(f"    {hour:02d}:00  {charge / 1000:+7.2f} MW  {price:6.2f} EUR/MWh")
        seconds = time.perf_counter() - t0
        profit = sum(fleet.get("profit"))
        fleet.close()
    return prices, profit, seconds


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--agents", type=int, default=2000)
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--backend", default="process", choices=("process", "thread", "serial"))
    args = p.parse_args(argv)
    prices, profit, seconds = run(args.agents, args.hours, args.workers, args.backend)
    households = HOUSEHOLDS_PER_BATTERY * args.agents
    no_batteries = supply_price(base_load(args.hours, households), households)
    print(f"  price range {min(prices):.1f}..{max(prices):.1f} EUR/MWh "
          f"(without batteries {no_batteries.min():.1f}..{no_batteries.max():.1f}); "
          f"batteries earned {profit:.0f} EUR; {seconds:.1f} s of market hours")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
