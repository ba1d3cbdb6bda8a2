"""Derive the exp polynomials of fastsoftmax/_numba/_math.py: python tools/exp_minimax.py

Remez exchange for p(r) = 1 + c1 r + ... + cd r^d minimising max |p(r)/exp(r) - 1| on
[-ln2/2, ln2/2], the range left after Cody-Waite reduction.  c0 is pinned to 1 so that
exp(0) = 1 exactly (the row maximum then contributes exactly 1 to every softmax sum).
Needs mpmath (in the test extra; tests/test_exp_constants.py reruns it against the constants).
"""

from mpmath import cos, exp, log, lu_solve, matrix, mp, mpf, nstr, pi


def remez(degree: int, iterations: int = 40):
    a, b = -log(2) / 2, log(2) / 2
    n = degree
    xs = [(a + b) / 2 - (b - a) / 2 * cos(pi * i / n) for i in range(n + 1)]
    grid = [a + (b - a) * i / 4000 for i in range(4001)]
    for _ in range(iterations):
        m, rhs = matrix(n + 1, n + 1), matrix(n + 1, 1)
        for i, x in enumerate(xs):
            for k in range(1, n + 1):
                m[i, k - 1] = x**k
            m[i, n] = (-1) ** i * exp(x)
            rhs[i] = exp(x) - 1
        sol = lu_solve(m, rhs)
        coef = [mpf(1)] + [sol[k] for k in range(n)]
        err = [(sum(c * x**k for k, c in enumerate(coef)) - exp(x)) / exp(x) for x in grid]
        ext = (
            [0]
            + [
                i
                for i in range(1, len(grid) - 1)
                if (err[i] - err[i - 1]) * (err[i + 1] - err[i]) <= 0
            ]
            + [len(grid) - 1]
        )
        if len(ext) != n + 1:
            break
        xs = [grid[i] for i in ext]
    return coef, max(abs(e) for e in err)


if __name__ == "__main__":
    mp.dps = 50
    for dtype, degree in (("float32", 6), ("float64", 11)):
        coef, err = remez(degree)
        print(f"{dtype}: degree {degree}, max relative error {float(err):.3g}")
        print("  " + ", ".join(nstr(c, 20) for c in coef))
