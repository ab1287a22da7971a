"""The benchmark suites the package ships: one test per client and load level of a recipe.

    pytest --pyargs pytest_aifactory.benchmarks --recipe RECIPE

They are part of the package, not of a repository, so a project that installs the plugin runs
them without copying them: a module of its own imports the tests it wants, and pytest collects
them there (`aifactory init` writes such a module):

    from pytest_aifactory.benchmarks.test_inference import test_serving

Each test carries its `aifactory_clients` mark on the function, so it brings the client kinds it
is for wherever it is imported; a module with no client of its kinds in the recipe skips. This
package imports none of its modules: a test module imported here would be collected twice.
"""
