"""Numba kernels of the two-stage tunable aggregation (paper §2.1.1–2.1.2).

Everything here runs inside one compiled call per aggregate, single-threaded
(parallelism is across aggregates, in processes). Random numbers come from a
:class:`numpy.random.Generator` passed in, so results depend only on its seed.

Decisions the paper leaves open (documented in the book, chapter "The model"):

* **Radius of gyration in Eq. (8).** Radii are replaced by their arithmetic mean
  ``a`` of the combined set (paper §2.1.2), so all masses are equal; each
  sphere contributes its own moment of inertia, R_g² = mean|x − c|² + (3/5)a²
  (solid spheres). With point masses three touching spheres cannot reach
  D_f < 1.71 at k_f = 1.3, so θ_Df = 1.5, 1.6 of the paper's grid would never
  pass the third particle; with solid spheres the whole grid is feasible.
* **First contact.** Two single spheres are put in contact by hand (uniform
  direction, gap uniform in the 1 % contact band): Eq. (8) gives no contact
  distance for them in general.
* **Uniform sampling on the permissible set.** For every pair (i in the
  aggregate, j in the cluster) the centre positions on the sphere of radius d
  that put i and j in the contact band form a spherical zone; zones are drawn
  proportionally to their area, a point is drawn uniformly in the zone
  (Archimedes: uniform in the axial coordinate) and accepted with probability
  1/m, m = number of zones containing it, then rejected if anything overlaps.
  The accepted point is uniform on the permissible set of that rotation.
* **Failures.** d² <= 0, no zone, or no accepted draw after ``max_draws``
  draws for each of ``max_rotations`` random rotations -> the primary cluster
  (first stage) or the whole aggregate (second stage) is drawn again, at most
  ``max_restarts`` times; then the kernel reports failure.
"""

from __future__ import annotations

import numpy as np
from numba import njit

CONTACT_FACTOR = 1.01
#: New contacts are placed at >= (1 + SEPARATION_EPS)(r_i + r_j), so that no
#: rounding of stored coordinates can produce an overlap.
SEPARATION_EPS = 1e-9
#: Moment of inertia of a solid sphere per unit mass, in units of r² (I = 2/5 m r²
#: about an axis, 3/5 m r² about its centre).
SOLID_SPHERE_RG2 = 0.6

STATUS_OK = 0
STATUS_FAILED = 1


@njit(cache=True)
def _random_unit_vector(rng):
    z = 2.0 * rng.random() - 1.0
    phi = 2.0 * np.pi * rng.random()
    s = np.sqrt(max(0.0, 1.0 - z * z))
    return np.array([s * np.cos(phi), s * np.sin(phi), z])


@njit(cache=True)
def random_rotation(rng):
    """Uniformly distributed rotation matrix (from a random unit quaternion)."""
    q = np.empty(4)
    for k in range(4):
        q[k] = rng.standard_normal()
    q /= np.sqrt(np.sum(q * q))
    w, x, y, z = q[0], q[1], q[2], q[3]
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@njit(cache=True)
def _centroid(pos, n):
    """Centre of mass of the first ``n`` particles with equal masses [nm]."""
    c = np.zeros(3)
    for i in range(n):
        c += pos[i]
    return c / n


@njit(cache=True)
def _mass_centre(pos, rad, n):
    """Centre of mass with masses ∝ r³ (paper Eq. 4) [nm]."""
    c = np.zeros(3)
    m = 0.0
    for i in range(n):
        w = rad[i] ** 3
        c += w * pos[i]
        m += w
    return c / m


@njit(cache=True)
def _rg2(pos, n, centre, a, self_term):
    """R_g² with the radii replaced by their mean ``a`` (equal masses) [nm²].

    mean |x_i − c|² plus ``self_term``·a², the solid sphere's own share.
    """
    s = 0.0
    for i in range(n):
        d = pos[i] - centre
        s += d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
    return s / n + self_term * a * a


@njit(cache=True)
def placement_distance_sq(m_a, m_c, rg2_a, rg2_c, rg2_target):
    """Squared distance d² between the centres of mass of A and C [nm²].

    From the parallel-axis theorem, M R_g² = M_A R_A² + M_C R_C² + (M_A M_C / M) d²
    with M = M_A + M_C; setting R_g² to ``rg2_target`` = a² (N/k_f)^(2/D_f) of
    Eq. (5) gives d. With masses equal to particle counts (radii replaced by
    their mean) this is the paper's Eq. (8).
    """
    m = m_a + m_c
    return m / (m_a * m_c) * (m * rg2_target - m_a * rg2_a - m_c * rg2_c)


@njit(cache=True)
def target_rg2(n, a, df, kf):
    """R_g² that Eq. (5) requires of N particles of mean radius a [nm²]."""
    return a * a * (n / kf) ** (2.0 / df)


@njit(cache=True)
def _orthonormal_pair(u):
    if abs(u[0]) < 0.9:
        t = np.array([1.0, 0.0, 0.0])
    else:
        t = np.array([0.0, 1.0, 0.0])
    e1 = np.cross(u, t)
    e1 /= np.sqrt(np.sum(e1 * e1))
    e2 = np.cross(u, e1)
    return e1, e2


@njit(cache=True)
def place_on_sphere(rng, pos_a, rad_a, n_a, centre_a, rel_c, rad_c, n_c, d, max_draws):
    """Draw a centre ``c`` (|c − centre_a| = d) uniformly on the permissible set.

    ``rel_c`` are the cluster's particle positions relative to its centre of
    mass (already rotated). Returns ``(ok, c)``.
    """
    n_pairs = n_a * n_c
    axes = np.empty((n_pairs, 3))
    lo = np.empty(n_pairs)
    hi = np.empty(n_pairs)
    cum = np.empty(n_pairs)
    nz = 0
    total = 0.0
    for i in range(n_a):
        for j in range(n_c):
            v = pos_a[i] - rel_c[j] - centre_a
            dist = np.sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2])
            s = rad_a[i] + rad_c[j]
            s_lo = s * (1.0 + SEPARATION_EPS)
            s_hi = s * CONTACT_FACTOR
            if dist < 1e-12 * s:
                # the zone is the whole sphere or nothing
                if d < s_lo or d > s_hi:
                    continue
                cmin, cmax = -1.0, 1.0
                ax = np.array([0.0, 0.0, 1.0])
            else:
                cmin = (d * d + dist * dist - s_hi * s_hi) / (2.0 * d * dist)
                cmax = (d * d + dist * dist - s_lo * s_lo) / (2.0 * d * dist)
                cmin = max(cmin, -1.0)
                cmax = min(cmax, 1.0)
                if cmax <= cmin:
                    continue
                ax = v / dist
            axes[nz] = ax
            lo[nz] = cmin
            hi[nz] = cmax
            total += cmax - cmin
            cum[nz] = total
            nz += 1
    c = np.zeros(3)
    if nz == 0:
        return False, c
    for _ in range(max_draws):
        # zone with probability proportional to its area 2πd²(cmax − cmin)
        t = rng.random() * total
        k = 0
        while k < nz - 1 and cum[k] < t:
            k += 1
        cz = lo[k] + (hi[k] - lo[k]) * rng.random()
        phi = 2.0 * np.pi * rng.random()
        sz = np.sqrt(max(0.0, 1.0 - cz * cz))
        e1, e2 = _orthonormal_pair(axes[k])
        u = cz * axes[k] + sz * (np.cos(phi) * e1 + np.sin(phi) * e2)
        c = centre_a + d * u
        m = 0
        ok = True
        for i in range(n_a):
            for j in range(n_c):
                dx = c[0] + rel_c[j, 0] - pos_a[i, 0]
                dy = c[1] + rel_c[j, 1] - pos_a[i, 1]
                dz = c[2] + rel_c[j, 2] - pos_a[i, 2]
                r2 = dx * dx + dy * dy + dz * dz
                s = rad_a[i] + rad_c[j]
                s_lo = s * (1.0 + SEPARATION_EPS)
                if r2 < s_lo * s_lo:
                    ok = False
                    break
                if r2 <= (s * CONTACT_FACTOR) ** 2:
                    m += 1
            if not ok:
                break
        if not ok or m == 0:
            continue
        if m > 1 and rng.random() * m >= 1.0:
            continue  # thin the union of zones to a uniform density
        return True, c
    return False, c


@njit(cache=True)
def _contact_pair_by_hand(rng, r1, r2):
    """Offset of a second sphere touching the first (gap uniform in the contact band)."""
    s = r1 + r2
    dist = s * (1.0 + SEPARATION_EPS + (CONTACT_FACTOR - 1.0 - SEPARATION_EPS) * rng.random())
    return dist * _random_unit_vector(rng)


@njit(cache=True)
def draw_radius(rng, log_centres, log_spread):
    """One radius [nm]: exp(centre + spread · Z), the centre one of ``log_centres`` at random (a
    log-normal law has one centre, and then no draw picks it: the paper's stream of draws)."""
    c = log_centres[0]
    if log_centres.shape[0] > 1:
        c = log_centres[min(int(rng.random() * log_centres.shape[0]), log_centres.shape[0] - 1)]
    return np.exp(c + log_spread * rng.standard_normal())


@njit(cache=True)
def grow_primary_cluster(rng, n, df, kf, log_centres, log_spread, self_term, max_draws):
    """Tunable particle-cluster aggregation of ``n`` particles (first stage), radii drawn by
    :func:`draw_radius`.

    Returns ``(ok, positions, radii)``; positions relative to the first particle [nm].
    """
    pos = np.zeros((n, 3))
    rad = np.empty(n)
    for k in range(n):
        rad[k] = draw_radius(rng, log_centres, log_spread)
    if n >= 2:
        pos[1] = _contact_pair_by_hand(rng, rad[0], rad[1])
    rel = np.zeros((1, 3))
    one = np.empty(1)
    for k in range(2, n):
        a = np.mean(rad[:k + 1])
        centre = _centroid(pos, k)
        d2 = placement_distance_sq(k, 1, _rg2(pos, k, centre, a, self_term),
                                   self_term * a * a, target_rg2(k + 1, a, df, kf))
        if d2 <= 0.0:
            return False, pos, rad
        one[0] = rad[k]
        ok, c = place_on_sphere(rng, pos, rad, k, centre, rel, one, 1, np.sqrt(d2), max_draws)
        if not ok:
            return False, pos, rad
        pos[k] = c
    return True, pos, rad


@njit(cache=True)
def _plan_clusters(rng, target_n, p_tio2, theta0, theta1, continuous):
    """Labels and sizes of the primary clusters; the last one is truncated to meet N."""
    labels = np.empty(target_n, np.int64)
    sizes = np.empty(target_n, np.int64)
    total = 0
    k = 0
    while total < target_n:
        lab = 1 if rng.random() < p_tio2 else 0
        mean = theta1 if lab == 1 else theta0
        if continuous:
            size = 1 + rng.poisson(mean - 1.0)
        else:
            size = int(mean)
        size = min(size, target_n - total)
        labels[k] = lab
        sizes[k] = size
        total += size
        k += 1
    return labels[:k], sizes[:k]


@njit(cache=True)
def all_pairs_valid(pos, rad):
    """Final check (no overlap, one connected contact graph); O(N²)."""
    n = pos.shape[0]
    adj = np.zeros((n, n), np.bool_)
    for i in range(n):
        for j in range(i + 1, n):
            d = pos[i] - pos[j]
            r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
            s = rad[i] + rad[j]
            if r2 < s * s:
                return False
            if r2 <= (CONTACT_FACTOR * s) ** 2:
                adj[i, j] = True
                adj[j, i] = True
    seen = np.zeros(n, np.bool_)
    stack = np.empty(n, np.int64)
    stack[0] = 0
    seen[0] = True
    top = 1
    count = 1
    while top > 0:
        top -= 1
        i = stack[top]
        for j in range(n):
            if adj[i, j] and not seen[j]:
                seen[j] = True
                stack[top] = j
                top += 1
                count += 1
    return count == n


@njit(cache=True)
def build_aggregate(rng, target_n, df, kf, p_tio2, theta0, theta1, continuous,
                    centres_wo3, spread_wo3, centres_tio2, spread_tio2, self_term, max_draws,
                    max_rotations, max_restarts, attach_redraws):
    """Two-stage aggregation of ``target_n`` particles; a cluster's radii follow its material's law
    (log centres and spread, see :func:`draw_radius`). A cluster that cannot be attached (Eq. 8
    has no solution, or no free place on its sphere) is redrawn up to ``attach_redraws`` times
    before the whole aggregate restarts (0: the aggregate restarts at once).

    Returns ``(status, positions, radii, labels, cluster_ids, cluster_restarts,
    aggregate_restarts)``; positions relative to the centre of mass [nm].
    """
    pos = np.zeros((target_n, 3))
    rad = np.zeros(target_n)
    lab = np.zeros(target_n, np.int64)
    cid = np.zeros(target_n, np.int64)
    cluster_restarts = 0
    aggregate_restarts = 0
    while aggregate_restarts <= max_restarts:
        labels, sizes = _plan_clusters(rng, target_n, p_tio2, theta0, theta1, continuous)
        n_cur = 0
        failed = False
        for k in range(labels.shape[0]):
            size = sizes[k]
            for redraw in range(attach_redraws + 1):
                ok = False
                for _ in range(max_restarts + 1):
                    if labels[k] == 0:
                        ok, cpos, crad = grow_primary_cluster(rng, size, df, kf, centres_wo3, spread_wo3,
                                                              self_term, max_draws)
                    else:
                        ok, cpos, crad = grow_primary_cluster(rng, size, df, kf, centres_tio2, spread_tio2,
                                                              self_term, max_draws)
                    if ok:
                        break
                    cluster_restarts += 1
                if not ok:
                    return (STATUS_FAILED, pos, rad, lab, cid, cluster_restarts,
                            aggregate_restarts)
                failed = False
                if n_cur == 0:
                    offset = np.zeros(3)
                    rel = cpos
                elif n_cur == 1 and size == 1:
                    rel = cpos
                    offset = pos[0] + _contact_pair_by_hand(rng, rad[0], crad[0])
                else:
                    a = (np.sum(rad[:n_cur]) + np.sum(crad)) / (n_cur + size)
                    centre_a = _centroid(pos, n_cur)
                    centre_c = _centroid(cpos, size)
                    d2 = placement_distance_sq(n_cur, size, _rg2(pos, n_cur, centre_a, a, self_term),
                                               _rg2(cpos, size, centre_c, a, self_term),
                                               target_rg2(n_cur + size, a, df, kf))
                    if d2 <= 0.0:
                        failed = True
                    else:
                        placed = False
                        for _ in range(max_rotations):
                            rot = random_rotation(rng)
                            rel = (cpos - centre_c) @ rot.T
                            placed, offset = place_on_sphere(rng, pos, rad, n_cur, centre_a, rel, crad,
                                                             size, np.sqrt(d2), max_draws)
                            if placed:
                                break
                        failed = not placed
                if not failed:
                    break
                if redraw < attach_redraws:                 # a redrawn cluster counts as a restart
                    cluster_restarts += 1
            if failed:
                break
            for j in range(size):
                pos[n_cur + j] = rel[j] + offset
                rad[n_cur + j] = crad[j]
                lab[n_cur + j] = labels[k]
                cid[n_cur + j] = k
            n_cur += size
        if not failed and all_pairs_valid(pos, rad):
            centre = _mass_centre(pos, rad, target_n)
            for i in range(target_n):
                pos[i] -= centre
            return STATUS_OK, pos, rad, lab, cid, cluster_restarts, aggregate_restarts
        aggregate_restarts += 1
    return STATUS_FAILED, pos, rad, lab, cid, cluster_restarts, aggregate_restarts
