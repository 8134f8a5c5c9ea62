"""Example run: read a CSV, summarise it, draw a chart and write a report file."""
import matplotlib.pyplot as plt
import pandas as pd

df = pd.read_csv("sales.csv")
by_month = df.pivot(index="month", columns="region", values="total")
print(by_month)
print("total sales:", df.total.sum())

ax = by_month.plot(kind="bar", title="Sales by month and region")
ax.set_ylabel("units")
plt.tight_layout()
plt.show()

by_month.sum(axis=1).to_csv("monthly_totals.csv", header=["total"])
