from setuptools import find_packages, setup

SWEEP = ["SQLAlchemy>=2.0,<2.1", "PyMySQL>=1.0,<2"]
# bus: events on the OpenStack notification bus (crashup_lib.bus; kombu rather than oslo.messaging, measured by
# bench/bus.py: see crashup_lib/bus.py). Only the controller's daemons publish: compute nodes need not install it.
BUS = ["kombu>=5.3,<5.8"]

setup(
    name="crashup",
    version="0.1.0",
    description="OpenStack compute high availability and recovery for Pacemaker",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["crashup_lib", "crashup_lib.*"]),
    package_data={"crashup_lib.events": ["events.schema.json"]},   # the events contract, read at run time
    include_package_data=True,
    # Ranges: the lower bounds are what the code needs, the upper bounds what has been tested
    # (constraints.txt pins the exact versions the test suite runs on).
    install_requires=[
        "lxml>=4.9,<7",
        "openstacksdk>=1.0,<5",
        "pyghmi>=1.6,<1.7",           # crashup_lib.ipmi works around defects of this series
        "keystoneauth1>=5.1,<6",
        "PyYAML>=6,<7",               # the pcs-templates inventory (openstacksdk needs it too)
        "prometheus-client>=0.17,<0.27",   # crashup_lib.metrics: the daemon's textfile, `crashup metrics`
    ],
    # jsonschema: tests validate events; hypothesis: property-based tests of every parser and entry point;
    # python-novaclient: the lab's tests read nova through its own client. libvirt-python: crashup_lib.health's
    # libvirt backend (imported only when one is built); it compiles against the system's libvirt (Debian:
    # libvirt-dev, pkg-config, gcc, python3-dev).
    # sweep: the CrashUp sweep's database access (crashup_lib.sweep.db, imported only by `crashup sweep`)
    extras_require={"test": ["pytest>=7", "jsonschema>=4.18", "hypothesis>=6.100,<7", "python-novaclient>=18,<19",
                             "libvirt-python>=9.0", *SWEEP, *BUS],
                    "libvirt": ["libvirt-python>=9.0"],
                    "sweep": SWEEP,
                    "bus": BUS},
    entry_points={"console_scripts": ["crashup = crashup_lib.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3.11",
        "Topic :: System :: Clustering",
        "Topic :: System :: Recovery Tools",
    ],
)
