from ntmobile.cli.main import main

main()
