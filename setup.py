"""Package layout: the top-level folders kernels/, export/ and engine/ install as tusss.kernels,
tusss.export and tusss.engine (everything else is declared in pyproject.toml)."""

from setuptools import find_packages, setup

packages = find_packages(include=["tusss", "tusss.*"])
package_dir = {"tusss": "tusss"}
for top in ("kernels", "export", "engine"):
    packages.append(f"tusss.{top}")
    package_dir[f"tusss.{top}"] = top
    packages += [f"tusss.{top}.{sub}" for sub in find_packages(top)]

setup(packages=packages, package_dir=package_dir)
